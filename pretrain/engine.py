"""The DeepSpeed engine, built from our TrainConfig (there is no second, hand-kept JSON).

Precision contract (every ZeRO stage, MLM on or off, training and training-time evaluation):
- Parameters, gradients, the all-reduced gradients and AdamW's state are fp32. bf16 / fp16 only
  change the forward and backward arithmetic, through DeepSpeed's `torch_autocast` section (the
  same torch.autocast that open_clip_train's amp_bf16 uses). DeepSpeed's own `bf16` / `fp16`
  sections are never enabled: they cast the module itself to 16 bit, so fp32 inputs no longer fit
  it, and at stage 0 they wrap the optimizer in a per-parameter Python loop.
- fp16 adds dynamic loss scaling (torch.amp.GradScaler inside DeepSpeed); steps whose gradients
  overflow are skipped and the scale is lowered.
- Losses, the [B, B] logits and their softmax are computed in fp32 (pretrain.losses casts).
- Gradients are reduced in fp32 (`lower_precision_safe_modules: []`), as DDP does for open_clip:
  DeepSpeed would otherwise reduce Linear/Conv gradients in the autocast dtype.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from clip_pretrain.pretrain.config import TrainConfig
from clip_pretrain.pretrain.distributed import DistContext
from clip_pretrain.pretrain.losses import param_groups

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def clips_in_step(cfg: TrainConfig) -> bool:
    """True when our train step (not DeepSpeed) clips gradients and skips non-finite updates.

    At ZeRO stage 0 without a loss scaler the gradients are whole and identical on every rank
    after the all-reduce, so torch's foreach clip_grad_norm_ and fused AdamW's `found_inf` do
    both on the device with no host read. DeepSpeed's stage-0 clipping builds tensors from Python
    floats on the device each step (two blocking copies); ZeRO 1-3 and fp16 keep DeepSpeed's
    own clipping and overflow handling (it needs the partitions / the loss scale).
    """
    return cfg.zero.stage == 0 and cfg.precision != "fp16"


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent of `cfg`."""
    zero: dict[str, Any] = {
        "stage": cfg.zero.stage,
        "overlap_comm": cfg.zero.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": cfg.zero.reduce_bucket_size,
        "allgather_bucket_size": cfg.zero.reduce_bucket_size,
    }
    if cfg.zero.stage == 3 and world_size == 1:
        # One rank holds every partition anyway: keep all parameters resident instead of
        # "gathering" each module's weights from itself before every forward and backward.
        zero["stage3_param_persistence_threshold"] = 2**62
    if cfg.zero.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.zero.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.global_batch(world_size),
        "gradient_clipping": 0.0 if clips_in_step(cfg) else cfg.optim.grad_clip,
        "zero_optimization": zero,
        # We hand DeepSpeed a torch AdamW (also under offload): no CUDA op build is needed.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        # Its throughput timer synchronises the device twice per micro-batch; we time per log interval.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
    }
    if cfg.precision in AUTOCAST_DTYPES:
        config["torch_autocast"] = {"enabled": True, "dtype": cfg.precision, "lower_precision_safe_modules": []}
    return config


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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over decay / no-decay groups. Fused (one kernel for all tensors, CPU and CUDA) where
    the parameters live on a device it supports: it also takes `found_inf`, which skips an update
    on the device without reading anything back."""
    return torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay, cfg.optim.logit_scale_lr),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps,
        fused=True,
    )


def build_engine(model: torch.nn.Module, cfg: TrainConfig, dist: DistContext):
    """(DeepSpeed engine, the torch AdamW inside it) with the warmup+cosine schedule.

    `model` must already be on its device (the fused optimizer checks where parameters live).
    """
    import deepspeed

    optimizer = build_optimizer(model, cfg)
    schedule = lr_lambda(cfg, dist.world_size)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(cfg, dist.world_size),
        dist_init_required=False,
    )
    return engine, optimizer
