"""Loader throughput: our StreamingLoader vs open_clip_train's get_wds_dataset on the same shards.

    python -m benchmarks.loader_bench [--shards SPEC] [--model ViT-B-32] [--batches N] [--batch-size B] [--workers 1,2]

Both pipelines get the model's training transform and tokenizer; images/s is measured over
``--batches`` batches after a first (warm-up) batch, which absorbs worker start-up and the
shuffle-buffer fill. Without --shards, 256 synthetic 512 px JPEGs (fast decode halves the decode
resolution when the stored short side is at least twice the model input, 224 px for ViT-B-32) are
written to a temporary directory first, so the bench runs out of the box on a CPU.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import open_clip
from PIL import Image

from data.loader import DataConfig, build_loader
from data.shards import resolve_sources


def write_synthetic_shards(root: Path, side: int, shards: int = 4, per_shard: int = 64) -> str:
    """Contract-format shards of smooth random ``side`` px JPEGs (photo-like); returns the directory."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    entries = []
    for index in range(shards):
        name = f"bench-train-{index:06d}.tar"
        with wds.TarWriter(str(root / name)) as writer:
            for i in range(per_shard):
                # Upsampled noise plus fine noise: compresses roughly like a photo.
                coarse = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
                coarse = coarse.resize((side, side), Image.BICUBIC)
                pixels = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (side, side, 3)), 0, 255)
                buffer = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
                key = f"{index:03d}{i:05d}"
                caption = f"synthetic picture number {i} of shard {index}"
                meta = {"key": key, "captions": [caption], "width": side, "height": side}
                writer.write({"__key__": key, "jpg": buffer.getvalue(), "txt": caption, "json": json.dumps(meta)})
        entries.append({"file": name, "split": "train", "count": per_shard})
    manifest = {"format": 1, "prefix": "bench", "shards": entries, "totals": {"train": shards * per_shard, "val": 0}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


def images_per_second(batches: Iterable, count: int, size_of: Callable) -> float:
    """Images/s over ``count`` batches after the first one."""
    iterator = iter(batches)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += size_of(next(iterator))
    return images / (time.perf_counter() - start)


def ours(spec: str, workers: int, fast_decode: bool, args: argparse.Namespace, preprocess, tokenizer) -> float:
    cfg = DataConfig(train=spec, workers=workers, fast_decode=fast_decode, shuffle_buffer=1000)
    loader = build_loader(cfg, batch_size=args.batch_size, preprocess=preprocess, tokenizer=tokenizer, seed=0)
    return images_per_second(loader, args.batches, lambda batch: len(batch["keys"]))


def patch_open_clip_wds() -> None:
    """open_clip_train 3.3 + webdataset >= 0.2.96: its tarfile_to_samples_nothrow gets webdataset's
    end-of-shard marker ({}) and fails with KeyError 'fname' (open_clip issue 935). Same stages,
    without the marker."""
    import open_clip_train.data as oc_data
    from webdataset.tariterators import tar_file_expander, url_opener

    def tarfile_to_samples_nothrow(src, handler=oc_data.log_and_continue):
        streams = url_opener(src, handler=handler)
        files = tar_file_expander(streams, handler=handler, eof_value=None)
        return oc_data.group_by_keys_nothrow(files, handler=handler)

    oc_data.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow


def theirs(spec: str, workers: int, args: argparse.Namespace, preprocess, tokenizer) -> float:
    import open_clip_train.data as oc_data

    shards = [shard for source in resolve_sources(spec) for shard in source.shards]
    num_samples = sum(shard.count or 0 for shard in shards) or None
    run_args = Namespace(  # the fields open_clip_train's parse_args would set that get_wds_dataset reads
        train_data="::".join(shard.url for shard in shards), val_data=None, dataset_type="webdataset",
        train_num_samples=num_samples, val_num_samples=None, dataset_resampled=False,
        train_data_upsampling_factors=None, seed=0, batch_size=args.batch_size, workers=workers,
        world_size=1, rank=0, distributed=False)
    data = oc_data.get_wds_dataset(run_args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)

    def endless():  # its loader stops at the end of each epoch
        for epoch in range(10**9):
            data.set_epoch(epoch)
            yield from data.dataloader

    return images_per_second(endless(), args.batches, lambda batch: len(batch[0]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard spec (default: temporary synthetic 512 px shards)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (transform + tokenizer)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--image-side", type=int, default=512,
                        help="side of the synthetic JPEGs; fast decode needs >= 2x the transform's target")
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a comma-separated list of ints")
    if args.batches < 1 or args.batch_size < 1 or min(args.workers) < 1:
        parser.error("--batches, --batch-size and --workers must be >= 1")
    return args


def run(args: argparse.Namespace, spec: str) -> list[dict]:
    model_cfg = open_clip.get_model_config(args.model)
    if model_cfg is None:
        raise ValueError(f"--model: unknown open_clip model {args.model!r}; see open_clip.list_models()")
    image_size = model_cfg["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer(args.model)
    patch_open_clip_wds()
    rows = []
    print_header()
    for workers in args.workers:
        row = {"workers": workers,
               "ours_fast": ours(spec, workers, True, args, preprocess, tokenizer),
               "ours_plain": ours(spec, workers, False, args, preprocess, tokenizer),
               "open_clip": theirs(spec, workers, args, preprocess, tokenizer)}
        rows.append(row)
        print_row(row)
    return rows


def print_header() -> None:
    print(f"{'workers':>7} | {'ours img/s':>10} | {'ours no-fast img/s':>18} | {'open_clip img/s':>15} |"
          f" {'ours/theirs':>11} | {'no-fast/theirs':>14} | {'fast-decode gain':>16}", flush=True)


def print_row(row: dict) -> None:
    print(f"{row['workers']:>7} | {row['ours_fast']:>10.1f} | {row['ours_plain']:>18.1f} | {row['open_clip']:>15.1f} |"
          f" {row['ours_fast'] / row['open_clip']:>11.2f} | {row['ours_plain'] / row['open_clip']:>14.2f} |"
          f" {row['ours_fast'] / row['ours_plain']:>15.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        try:
            spec = args.shards or write_synthetic_shards(Path(tmp), args.image_side)
            resolve_sources(spec)  # fail early, with the loader's one-line message
            run(args, spec)
        except (ValueError, FileNotFoundError) as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
