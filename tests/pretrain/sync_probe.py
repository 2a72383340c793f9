"""Counts device read-backs in the train step: `python -m tests.pretrain.sync_probe CONFIG [key=value ...]`.

Builds a run exactly as pretrain.train does (one process), takes a few warm-up steps, then takes
more steps under a TorchDispatchMode that records every op that reads a device value back to the
host or has a data-dependent output shape (each is a blocking synchronisation on CUDA), with the
innermost stack frame of project code that caused it. Prints one JSON object.
"""
from __future__ import annotations

import json
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[2]
# Reads a value back (item(), bool(), int()) or sizes its output by the data (boolean indexing).
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique",
            "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::nonzero_static"}
# Indexing with a boolean mask: the CPU kernel finds the True positions itself, CUDA syncs for them.
MASK_INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_"}
OURS = ("pretrain/", "data/", "eval/")


def _has_mask_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNC_OPS or (name in MASK_INDEX_OPS and _has_mask_index(args)):
            self.calls[f"{name} from {where()}"] += 1
        return func(*args, **(kwargs or {}))


def where() -> str:
    """"PROJECT_FILE:LINE in LIBRARY_FILE:LINE": the innermost project frame on the stack and the
    innermost frame of all (where the read happens: project code, or a library it called)."""
    frames = [f for f in traceback.extract_stack()[:-3] if "sync_probe" not in f.filename and "torch/utils/_python_dispatch" not in f.filename]
    ours = "-"
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if REPO in path.parents and str(path.relative_to(REPO)).startswith(OURS):
            ours = f"{path.relative_to(REPO)}:{frame.lineno}"
            break
    outside_torch = [f for f in frames if "/torch/" not in f.filename] or frames
    last = outside_torch[-1]
    return f"{ours} in {_short(last.filename)}:{last.lineno}"


def _short(filename: str) -> str:
    path = Path(filename).resolve()
    if REPO in path.parents and ".venv" not in path.parts:
        return str(path.relative_to(REPO))
    return filename.split("site-packages/")[-1]


def main(argv: list[str]) -> int:
    from clip_pretrain.data.device import DeviceBatches
    from clip_pretrain.pretrain.config import load_config
    from clip_pretrain.pretrain.distributed import init_distributed, shutdown
    from clip_pretrain.pretrain.setup import build_everything, prepare_run_dir
    from clip_pretrain.pretrain.state import seed_everything
    from clip_pretrain.pretrain.step import StepMetrics, train_step

    cfg = load_config(argv[0], argv[1:])
    dist = init_distributed()
    prepare_run_dir(cfg, dist)
    seed_everything(cfg.seed)
    parts = build_everything(cfg, dist)
    batches = DeviceBatches(parts.loader, dist.device, parts.normalize)
    metrics = StepMetrics(dist.device)
    step = lambda: train_step(parts.engine, parts.optimizer, batches, cfg, dist.rank, dist.world_size, metrics)  # noqa: E731
    for _ in range(2):  # warm-up: lazy state (optimizer moments, loss scale) is created here
        step()
    counter = SyncCounter()
    with counter:
        for _ in range(3):
            step()
    values = metrics.read()
    print(json.dumps({"step_reads": dict(counter.calls), "steps": values["interval_steps"], "loss": values["loss"]}))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
