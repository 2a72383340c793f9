"""Runs open_clip_train (the peer in `python -m benchmarks.train_bench`) with two workarounds, math unchanged.

    python -m benchmarks.peer_open_clip [open_clip_train.main arguments ...]
    python -m benchmarks.peer_open_clip --argv-json FILE   # FILE: a JSON list of those arguments

The second form exists for torchrun: its parser matches abbreviations anywhere on the command line,
so a peer option such as `--logs` would be taken as an ambiguous `--logs-specs`.

1. Our model configs (pretrain/model_configs/*.json, e.g. clip-tiny) are registered with open_clip
   so `--model clip-tiny` resolves exactly as in our trainer.
2. open_clip_train 3.3's `tarfile_to_samples_nothrow` calls webdataset's `tar_file_expander`, which
   since webdataset 0.2.96 yields an end-of-shard marker `{}` by default; its own
   `group_by_keys_nothrow` then fails on `filesample["fname"]` (KeyError: 'fname', open_clip
   issue 935). We swap in the same three-stage function with `eof_value=None` (no marker), which
   is the pre-0.2.96 stream. Its grouping already splits samples at key changes, so the marker
   carried nothing it uses. `get_wds_dataset` looks the function up by module global at call time,
   and DataLoader workers are forked after the swap, so they see it too.

3. With several CPU processes, open_clip_train passes `device_ids=[cpu]` to DistributedDataParallel,
   which PyTorch rejects; DDP is given `device_ids=None` instead (the CPU form; same gradients).

On exit, rank 0 prints `bench_peer: peak_memory_mb=<float>` (CPU: peak resident set, from
ru_maxrss; CUDA: torch.cuda.max_memory_allocated) so the bench can compare memory too.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import open_clip
import torch

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "pretrain" / "model_configs"
PEAK_MEMORY_PREFIX = "bench_peer: peak_memory_mb="


def tarfile_to_samples_no_eof(src: Iterable[dict], handler: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
    """open_clip_train.data.tarfile_to_samples_nothrow without webdataset's end-of-shard `{}` marker."""
    from open_clip_train import data as peer_data
    from webdataset.tariterators import tar_file_expander, url_opener

    handler = handler or peer_data.log_and_continue
    streams = url_opener(src, handler=handler)
    files = tar_file_expander(streams, handler=handler, eof_value=None)
    return peer_data.group_by_keys_nothrow(files, handler=handler)


class CpuDeviceIdsDDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that drops CPU `device_ids` (only GPU modules accept them)."""

    def __init__(self, module: torch.nn.Module, device_ids=None, *args, **kwargs) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


def patch_peer() -> None:
    """Registers our model configs and installs the webdataset workaround (idempotent)."""
    from open_clip_train import data as peer_data

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    peer_data.tarfile_to_samples_nothrow = tarfile_to_samples_no_eof
    torch.nn.parallel.DistributedDataParallel = CpuDeviceIdsDDP  # open_clip_train.main looks it up per call


def peak_memory_mb() -> float:
    """Same definition as pretrain.train.peak_memory_mb: CUDA max allocated, else peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    patch_peer()
    from open_clip_train.main import main as peer_main

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--argv-json"]:
        if len(argv) != 2:
            print("error: --argv-json takes one file (a JSON list of open_clip_train arguments)", file=sys.stderr)
            return 2
        argv = json.loads(Path(argv[1]).read_text())
    result = peer_main(argv)
    if os.environ.get("RANK", "0") == "0":
        print(f"{PEAK_MEMORY_PREFIX}{peak_memory_mb():.1f}", flush=True)
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
