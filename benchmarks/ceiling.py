"""The data-free ceiling: the same model, loss and optimizer in a plain torch loop on random tensors.

    python -m benchmarks.ceiling [--model ViT-B-32] [--batch-size 256] [--precision bf16] [--steps 30]

What a trainer could reach on this device with no data loading, no DeepSpeed and no logging:
open_clip's model and ClipLoss, fused AdamW (lr 5e-4, wd 0.1), gradient clipping at 1.0, autocast in
the given precision (TF32 on for fp32 matmuls on CUDA), one process. Samples/s is measured over
the steps after --warmup, with one synchronisation at each end. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.peer_open_clip import MODEL_CONFIG_DIR

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def measure(model_name: str, batch_size: int, precision: str, steps: int, warmup: int, device: str) -> dict:
    import open_clip
    from open_clip.loss import ClipLoss

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = open_clip.create_model(model_name, device=device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1, fused=True)
    loss_fn = ClipLoss()
    size = model.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    context = open_clip.get_model_config(model_name)["text_cfg"].get("context_length", 77)
    images = torch.randn(batch_size, 3, height, width, device=device)  # [B, 3, H, W]
    texts = torch.randint(1, 49000, (batch_size, context), device=device)  # [B, L]
    texts[:, -1] = 49407  # an end-of-text token: open_clip pools at the argmax id

    def step() -> None:
        with torch.autocast(device_type=device, dtype=DTYPES[precision], enabled=precision != "fp32"):
            image_features, text_features, logit_scale = model(images, texts)[:3]
        loss = loss_fn(image_features.float(), text_features.float(), logit_scale.exp())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"name": "ceiling", "model": model_name, "batch_size": batch_size, "precision": precision,
            "steps": steps, "samples_per_s": batch_size * steps / elapsed,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32" if cuda else "clip-tiny")
    parser.add_argument("--batch-size", type=int, default=256 if cuda else 32)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16" if cuda else "fp32")
    parser.add_argument("--steps", type=int, default=30 if cuda else 5)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.steps < 1 or args.warmup < 0:
        print("error: --batch-size must be >= 2, --steps >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    result = measure(args.model, args.batch_size, args.precision, args.steps, args.warmup, "cuda" if cuda else "cpu")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
