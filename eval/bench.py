"""Image-embedding extraction throughput (images/s) of a random-init tiny model on CPU.

python -m eval.bench [--model clip-tiny] [--images 256] [--batch-size 64] [--threads N]
Uses pretrain/model_configs/clip-tiny.json when present, else eval/configs/eval-tiny-vit.json.
Reports preprocess + encode (from PIL images) and encode only (from ready tensors).
"""
from __future__ import annotations

import argparse
import time

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from eval.checkpoints import register_project_configs
from eval.cli import run_cli
from eval.encoder import ForwardEncoder


def default_model() -> str:
    register_project_configs()
    return "clip-tiny" if "clip-tiny" in open_clip.list_models() else "eval-tiny-vit"


def throughput(step, num_images: int, repeats: int = 3) -> float:
    """Best-of-`repeats` images/s; the first call warms up allocator and kernels."""
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return num_images / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="open_clip config name (default clip-tiny or eval-tiny-vit)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model or default_model()
    register_project_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"--model {name!r}: not a registered open_clip config")
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None, load_weights=False, pretrained_text=False).eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    encoder = ForwardEncoder(lambda images: {"image_features": model.encode_image(images)}, preprocess,
                             open_clip.get_tokenizer(name))
    pil_images = [Image.new("RGB", (96, 80), (i % 256, 40, 90)) for i in range(args.images)]
    tensors = torch.stack([preprocess(image) for image in pil_images])

    def end_to_end() -> None:
        for start in range(0, args.images, args.batch_size):
            batch = pil_images[start:start + args.batch_size]
            encoder.encode_image(torch.stack([preprocess(image) for image in batch]))

    def encode_only() -> None:
        for start in range(0, args.images, args.batch_size):
            encoder.encode_image(tensors[start:start + args.batch_size])

    size = model.visual.preprocess_cfg["size"]
    print(f"model {name} ({size} px), {args.images} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"preprocess + encode: {throughput(end_to_end, args.images):.0f} images/s")
    print(f"encode only:         {throughput(encode_only, args.images):.0f} images/s")


if __name__ == "__main__":
    run_cli(main)
