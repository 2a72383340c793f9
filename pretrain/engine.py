"""The DeepSpeed engine, built from our TrainConfig (there is no second, hand-kept JSON)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from pretrain.config import TrainConfig
from pretrain.distributed import DistContext
from pretrain.losses import param_groups


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent of `cfg`."""
    zero: dict[str, Any] = {
        "stage": cfg.zero.stage,
        "overlap_comm": cfg.zero.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": cfg.zero.reduce_bucket_size,
    }
    if cfg.zero.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.zero.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.global_batch(world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        # loss_scale 0 = dynamic loss scaling; overflowing steps are skipped by DeepSpeed itself.
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # We hand DeepSpeed a torch AdamW (also under offload): no CUDA op build is needed.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def lr_lambda(cfg: TrainConfig, world_size: int) -> Callable[[int], float]:
    """Multiplier of the base lr per optimizer step: linear warmup, then cosine to min_lr_ratio."""
    total = cfg.total_steps(world_size)
    warmup = min(total, math.ceil(cfg.optim.warmup_samples / cfg.global_batch(world_size)))
    floor = cfg.optim.min_lr_ratio

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def build_engine(model: torch.nn.Module, cfg: TrainConfig, dist: DistContext):
    """Wraps `model` in a DeepSpeed engine with AdamW (decay-free groups) and the warmup+cosine schedule."""
    import deepspeed

    groups = param_groups(model, cfg.optim.weight_decay)
    optimizer = torch.optim.AdamW(
        groups,
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps,
        # foreach is the fast path on both CUDA and CPU; fused needs every param on CUDA.
        foreach=True,
    )
    schedule = lr_lambda(cfg, dist.world_size)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(cfg, dist.world_size),
        dist_init_required=False,
    )
    return engine


def current_lr(engine) -> float:
    return float(engine.get_lr()[0])
