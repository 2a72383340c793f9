"""Loader throughput: our StreamingLoader vs open_clip_train's get_wds_dataset on the same shards.

    python -m benchmarks.loader_bench [--shards SPEC | --coco-mini DIR [--replicas N]] [--model ViT-B-32]
        [--batches N] [--batch-size B] [--workers 1,2,full] [--decode cpu,gpu]

Both pipelines get the model's training transform and tokenizer; images/s is measured over
``--batches`` batches after a first (warm-up) batch, which absorbs worker start-up and the
shuffle-buffer fill. Our loader runs with CPU decode (fast decode on and off) and, with ``gpu`` in
--decode, with ``data.decode=gpu``: workers ship JPEG bytes and crops, and the batch is decoded on
the first CUDA device (on a machine without one, in this process on the CPU: a check of the path,
not a GPU figure). Shards: --shards; or --coco-mini, real photos (../shared/data/coco-mini)
replicated and built at --image-side px; or by default 256 synthetic --image-side px JPEGs, so the
bench runs out of the box. ``full`` in --workers means every core but one.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import open_clip
from PIL import Image

import torch

from benchmarks.coco_shards import build_coco_shards
from clip_pretrain.data.device import split_normalize
from clip_pretrain.data.device_decode import CropPlan, DeviceDecoder
from clip_pretrain.data.loader import DataConfig, build_loader
from clip_pretrain.data.shards import resolve_sources


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


def ours_device_decode(spec: str, workers: int, args: argparse.Namespace, preprocess, tokenizer) -> float:
    """data.decode=gpu: the loader's batches decoded and cropped on the device, as the trainer does."""
    uint8_transform = split_normalize(preprocess)[0]
    cfg = DataConfig(train=spec, workers=workers, shuffle_buffer=1000, decode="gpu")
    loader = build_loader(cfg, batch_size=args.batch_size, preprocess=uint8_transform, tokenizer=tokenizer, seed=0,
                          pin_memory=torch.cuda.is_available())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    decode = DeviceDecoder(CropPlan.from_transform(uint8_transform), device)

    def decoded():
        for batch in loader:
            images = decode(batch)["images"]
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the images exist when they are counted
            yield images
    return images_per_second(decoded(), args.batches, len)


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
    parser.add_argument("--coco-mini", type=Path, help="build shards of these real photos (../shared/data/coco-mini)")
    parser.add_argument("--replicas", type=int, default=8, help="copies of coco-mini in its shards")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--decode", default="cpu", help="comma list of cpu, gpu (data.decode) to measure")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (transform + tokenizer)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; 'full': every core but one")
    parser.add_argument("--image-side", type=int, default=None,
                        help="side of the synthetic JPEGs (512) or of the coco-mini shards (384); fast decode "
                             "needs >= 2x the transform's target")
    args = parser.parse_args(argv)
    full = max(1, len(os.sched_getaffinity(0)) - 1)
    try:
        args.workers = [full if w.strip() == "full" else int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a comma-separated list of ints or 'full'")
    args.decode = [d.strip() for d in args.decode.split(",") if d.strip()]
    if not args.decode or set(args.decode) - {"cpu", "gpu"}:
        parser.error(f"--decode: {','.join(args.decode)!r}: use cpu, gpu or cpu,gpu")
    if args.batches < 1 or args.batch_size < 1 or min(args.workers) < 1 or args.replicas < 1:
        parser.error("--batches, --batch-size, --workers and --replicas must be >= 1")
    if args.shards and args.coco_mini:
        parser.error("--shards and --coco-mini: pass one of them")
    return args


def run(args: argparse.Namespace, spec: str) -> list[dict]:
    open_clip.add_model_config(str(Path(__file__).resolve().parents[1] / "pretrain" / "model_configs"))  # clip-tiny, ...
    model_cfg = open_clip.get_model_config(args.model)
    if model_cfg is None:
        raise ValueError(f"--model: unknown open_clip model {args.model!r}; see open_clip.list_models()")
    image_size = model_cfg["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer(args.model)
    patch_open_clip_wds()
    rows = []
    print(f"{'workers':>7} | {'loader':<38} | {'img/s':>8} | {'img/s/worker':>12} | {'/ open_clip':>11}", flush=True)
    for workers in args.workers:
        figures = {"open_clip": theirs(spec, workers, args, preprocess, tokenizer)}
        if "cpu" in args.decode:
            figures["ours, cpu decode"] = ours(spec, workers, True, args, preprocess, tokenizer)
            figures["ours, cpu decode no-fast"] = ours(spec, workers, False, args, preprocess, tokenizer)
        if "gpu" in args.decode:
            where = "cuda" if torch.cuda.is_available() else "cpu, in-process"
            figures[f"ours, device decode ({where})"] = ours_device_decode(spec, workers, args, preprocess, tokenizer)
        for name, value in figures.items():
            rows.append({"workers": workers, "loader": name, "images_per_s": value,
                         "per_worker": value / workers, "vs_open_clip": value / figures["open_clip"]})
            print(f"{workers:>7} | {name:<38} | {value:>8.1f} | {value / workers:>12.1f} | {value / figures['open_clip']:>10.2f}x",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        try:
            if args.coco_mini:
                print(f"loader_bench: building coco-mini x {args.replicas} shards", file=sys.stderr, flush=True)
                spec = build_coco_shards(args.coco_mini, Path(tmp) / "coco", args.image_side or 384, args.replicas,
                                         max(args.workers))
            else:
                spec = args.shards or write_synthetic_shards(Path(tmp), args.image_side or 512)
            resolve_sources(spec)  # fail early, with the loader's one-line message
            rows = run(args, spec)
            if args.out:
                args.out.write_text(json.dumps({"spec": args.shards or ("coco-mini" if args.coco_mini else "synthetic"),
                                                "batch_size": args.batch_size, "model": args.model, "rows": rows}, indent=2))
        except (ValueError, FileNotFoundError, RuntimeError) as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
