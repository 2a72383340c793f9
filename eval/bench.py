"""Evaluation throughput (images/s): JPEG files -> DataLoader decode workers -> image tower.

python -m clip_pretrain.eval.bench [--model clip-tiny] [--images 512] [--batch-size 64] [--workers 0 2] \
    [--device cuda|cpu] [--precision fp32 bf16] [--data IMAGEFOLDER] [--threads N]
Random-init weights (throughput does not depend on them). Without --data, writes --images 256 px
JPEGs to a temporary ImageFolder. Each row: the path eval.run takes (eval.features), best of 3
passes after a warm-up pass; "encode only" times the tower on ready tensors.
GPU: python -m clip_pretrain.eval.bench --model ViT-B-32 --device cuda --precision fp32 bf16 --workers 4 8 --images 4096 --batch-size 256
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clip_pretrain.common.cli import prog_name
from clip_pretrain.eval.checkpoints import LoadedModel, register_project_configs
from clip_pretrain.eval.cli import default_device, run_cli
from clip_pretrain.eval.datasets import load_classification
from clip_pretrain.eval.features import extract_image_features


def default_model() -> str:
    register_project_configs()
    return "clip-tiny" if "clip-tiny" in open_clip.list_models() else "eval-tiny-vit"


def write_images(folder: Path, count: int) -> Path:
    """An ImageFolder of `count` 256 px JPEGs in two classes."""
    for index in range(count):
        path = folder / f"class{index % 2}" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.effect_noise((256, 256), 40 + index % 50).convert("RGB").save(path, quality=90)
    return folder


def best_seconds(step, repeats: int = 3) -> float:
    step()  # warm-up: allocator, kernels, page cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def build_encoder(name: str, device: str, precision: str) -> LoadedModel:
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None, load_weights=False, pretrained_text=False).to(device).eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return LoadedModel(model, name, "random-init", preprocess, open_clip.get_tokenizer(name), torch.device(device),
                       precision=precision)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.eval.bench"), description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="open_clip config name (default clip-tiny or eval-tiny-vit)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--data", default=None, help="an ImageFolder to read instead of generated JPEGs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model or default_model()
    register_project_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"--model {name!r}: not a registered open_clip config")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data) if args.data else write_images(Path(tmp), args.images)
        records = load_classification(str(folder)).records[:args.images]
        print(f"model {name}, {len(records)} images from {folder if args.data else 'generated 256 px JPEGs'}, "
              f"batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} CPU threads")
        print("| precision | workers | images/s (decode + encode) | images/s (encode only) |\n| --- | --- | --- | --- |")
        for precision in args.precision:
            encoder = build_encoder(name, args.device, precision)
            tensors = torch.stack([encoder.preprocess(records[i % len(records)].load())
                                   for i in range(args.batch_size)]).to(args.device)
            batches = -(-len(records) // args.batch_size)
            encode = best_seconds(lambda: [encoder.encode_image(tensors) for _ in range(batches)])
            for workers in args.workers:
                seconds = best_seconds(lambda: extract_image_features(
                    encoder, records, batch_size=args.batch_size, workers=workers, progress=False))
                print(f"| {precision} | {workers} | {len(records) / seconds:.0f} | "
                      f"{batches * args.batch_size / encode:.0f} |")


if __name__ == "__main__":
    run_cli(main)
