"""Gradients of one cached step vs one big-batch step: `python -m tests.pretrain.accum_probe K B [key=value ...]`
(as one process, or under torchrun).

For MLM off and on, builds the smoke run's engine twice from the same seed: once with
micro_batch=K*B, grad_accum=1, and once with micro_batch=B, grad_accum=K and loss.accum_features,
feeds both the same K*B synthetic samples per rank, and records every parameter's full gradient
at the accumulation boundary (before the update) and the logged loss. Prints one JSON object:
{"mlm=W": {"max_diff": {param: max |cached - big|}, "max_grad": {param: max |big|},
"loss_big": ..., "loss_cached": ...}}.
"""
from __future__ import annotations

import json
import sys

import torch

from clip_pretrain.pretrain import step

MASKED_POSITIONS = (1, 2)  # two real tokens of every caption: equal MLM counts in every micro-batch


def synthetic_batch(count: int, rank: int, image_size: int, tokenizer, mask_id: int) -> dict:
    generator = torch.Generator().manual_seed(1000 + rank)
    texts = tokenizer([f"a photo of shape {rank} {i} {i * 7 % 5}" for i in range(count)])
    labels = torch.full_like(texts, -100)
    input_ids = texts.clone()
    for position in MASKED_POSITIONS:
        labels[:, position] = texts[:, position]
        input_ids[:, position] = mask_id
    return {"images": torch.randn(count, 3, image_size, image_size, generator=generator), "texts": texts,
            "mlm_input_ids": input_ids, "mlm_labels": labels}


def micro_batches(samples: dict, size: int, count: int) -> list[dict]:
    parts = [{name: value[i * size:(i + 1) * size] for name, value in samples.items() if name != "mlm_positions"}
             for i in range(count)]
    for part in parts:  # flat indices into this micro-batch's labels
        if "mlm_labels" in part:
            part["mlm_positions"] = (part["mlm_labels"].flatten() != -100).nonzero().flatten()
    return parts


def one_step(overrides: list[str], samples: dict, slices: int) -> tuple[dict[str, torch.Tensor], float]:
    """(full gradient per parameter name, logged loss) of one train_step over `samples` in `slices` micro-batches."""
    from deepspeed.utils import safe_get_full_grad

    from clip_pretrain.pretrain.config import load_config
    from clip_pretrain.pretrain.distributed import init_distributed
    from clip_pretrain.pretrain.engine import build_engine
    from clip_pretrain.pretrain.model import build_model
    from clip_pretrain.pretrain.state import seed_everything

    cfg = load_config("pretrain/configs/smoke.yaml", overrides)
    dist = init_distributed()
    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.loss).to(dist.device)
    engine, optimizer = build_engine(model, cfg, dist)
    if not cfg.loss.mlm_enabled:
        samples = {name: samples[name] for name in ("images", "texts")}
    batches = iter(micro_batches(samples, cfg.micro_batch, slices))
    grads: dict[str, torch.Tensor] = {}
    apply_update = step._apply_update

    def record_then_update(engine, optimizer, cfg):
        for name, param in engine.module.named_parameters():
            grad = safe_get_full_grad(param)
            if grad is not None:
                grads[name] = grad.detach().float().clone().reshape(param.ds_shape if hasattr(param, "ds_shape") else param.shape)
        return apply_update(engine, optimizer, cfg)

    step._apply_update = record_then_update
    try:
        metrics = step.StepMetrics(dist.device)
        step.train_step(engine, optimizer, batches, cfg, dist.rank, dist.world_size, metrics)
    finally:
        step._apply_update = apply_update
    return grads, metrics.read()["loss"]


def main(argv: list[str]) -> int:
    import open_clip

    from clip_pretrain.pretrain.distributed import init_distributed, shutdown

    accum, micro, extra = int(argv[0]), int(argv[1]), argv[2:]
    dist = init_distributed()
    tokenizer = open_clip.get_tokenizer("clip-tiny")
    image_size = open_clip.get_model_config("clip-tiny")["vision_cfg"]["image_size"]
    samples = synthetic_batch(accum * micro, dist.rank, image_size, tokenizer, tokenizer.vocab_size)
    report = {}
    for mlm in ("0", "0.5"):
        common = ["precision=fp32", f"loss.mlm_weight={mlm}", "optim.grad_clip=0", *extra]
        big, loss_big = one_step([*common, f"micro_batch={accum * micro}", "grad_accum=1"], samples, 1)
        cached, loss_cached = one_step([*common, f"micro_batch={micro}", f"grad_accum={accum}",
                                        "loss.accum_features=true"], samples, accum)
        assert big.keys() == cached.keys(), sorted(set(big) ^ set(cached))
        report[f"mlm={mlm}"] = {
            "max_diff": {name: (cached[name] - big[name]).abs().max().item() for name in big},
            "max_grad": {name: big[name].abs().max().item() for name in big},
            "loss_big": loss_big, "loss_cached": loss_cached,
        }
    if dist.rank == 0:
        print(json.dumps(report))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
