"""One optimizer step with no host synchronisation, and the device-side counters it feeds.

Between two reads (`StepMetrics.read`, once per logging interval and before checkpoints) nothing
here copies a value from the device to the host, so the host queues steps ahead of the GPU:
- the loss parts are summed on the device (`StepMetrics`), their interval mean is logged;
- a micro-batch with a non-finite loss is left out of those sums; at ZeRO stage 0 the update
  is skipped on the device (fused AdamW's `found_inf`, set from the global gradient norm, which
  is equal on every rank after the all-reduce, so ranks agree with no extra collective), and
  ZeRO 1-3 / fp16 skip it inside DeepSpeed (its overflow check reads the norm once per step);
- consecutive skipped steps are counted on the device; the loop checks them at each read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from clip_pretrain.pretrain.config import TrainConfig
from clip_pretrain.pretrain.engine import clips_in_step
from clip_pretrain.pretrain.losses import compute_objective

MODEL_INPUTS = ("images", "texts", "mlm_input_ids", "mlm_labels", "mlm_positions")


@dataclass
class StepMetrics:
    """Device-side sums since the last `read`; host-side counts and timers."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    finite_micro_batches: torch.Tensor | None = None
    skip_streak: torch.Tensor | None = None  # optimizer steps skipped in a row, up to now
    worst_streak: torch.Tensor | None = None  # longest streak since the last read
    skipped_steps: torch.Tensor | None = None  # since the last read
    steps: int = 0
    data_wait_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        zero = torch.zeros((), dtype=torch.int64, device=self.device)
        self.finite_micro_batches = zero.clone()
        self.skip_streak, self.worst_streak, self.skipped_steps = zero.clone(), zero.clone(), zero.clone()

    def add_micro_batch(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], finite: torch.Tensor) -> None:
        for name, value in {"loss": loss.detach(), **parts}.items():
            value = torch.where(finite, value.float(), 0.0)  # NaN * 0 would stay NaN
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.finite_micro_batches += finite

    def add_step(self, skipped: torch.Tensor) -> None:
        """`skipped`: bool tensor (or Python bool) on any device: was this optimizer step skipped?"""
        if not torch.is_tensor(skipped):  # a fill kernel, not a blocking host-to-device copy
            skipped = torch.full((), skipped, dtype=torch.bool, device=self.device)
        self.skip_streak = (self.skip_streak + 1) * skipped  # back to 0 after an applied step
        self.worst_streak = torch.maximum(self.worst_streak, self.skip_streak)
        self.skipped_steps += skipped
        self.steps += 1

    def read(self) -> dict[str, Any]:
        """Host values (one device sync): interval means of the loss parts, skip counts, and the
        wall-clock seconds since the previous read; then starts a new interval."""
        names = list(self.sums)
        packed = torch.stack([*(self.sums[n] for n in names), self.finite_micro_batches.float(),
                              self.worst_streak.float(), self.skipped_steps.float(), self.skip_streak.float()])
        values = packed.tolist()  # the one read-back of the interval
        *sums, finite, worst, skipped, streak = values
        elapsed = time.perf_counter() - self.started
        result = {name: total / finite if finite else float("nan") for name, total in zip(names, sums)}
        result |= {"worst_skip_streak": int(worst), "skipped_steps": int(skipped), "skip_streak": int(streak),
                   "interval_steps": self.steps, "interval_s": elapsed, "data_wait_s": self.data_wait_s}
        self.sums, self.steps, self.data_wait_s, self.started = {}, 0, 0.0, time.perf_counter()
        self.finite_micro_batches.zero_()
        self.worst_streak.copy_(self.skip_streak)
        self.skipped_steps.zero_()
        return result


def train_step(engine, optimizer: torch.optim.Optimizer, batches: Iterator[dict], cfg: TrainConfig,
               rank: int, world_size: int, metrics: StepMetrics) -> int:
    """Feeds micro-batches until DeepSpeed has taken one optimizer step (or skipped it); returns
    the samples this rank consumed. Reads nothing back from the device."""
    if cfg.loss.accum_features and cfg.grad_accum > 1:  # negatives from the whole accumulated batch
        from clip_pretrain.pretrain.accum import cached_train_step
        return cached_train_step(engine, optimizer, batches, cfg, rank, world_size, metrics)
    samples, first_step = 0, engine.global_steps
    while engine.global_steps == first_step:
        fetch = time.perf_counter()
        batch = next(batches)
        metrics.data_wait_s += time.perf_counter() - fetch
        samples += batch["images"].shape[0]
        outputs = engine(**{name: batch[name] for name in MODEL_INPUTS if name in batch})
        loss, parts = compute_objective(outputs, batch, cfg.loss, rank, world_size)
        metrics.add_micro_batch(loss, parts, torch.isfinite(loss))
        engine.backward(loss)
        if engine.is_gradient_accumulation_boundary():
            metrics.add_step(_apply_update(engine, optimizer, cfg))
        else:
            engine.step()  # DeepSpeed only counts the micro-batch here
    return samples


def _apply_update(engine, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.Tensor | bool:
    """engine.step() at an accumulation boundary; returns whether the update was skipped."""
    if not clips_in_step(cfg):
        scaler = getattr(engine, "torch_autocast_z0_gradscaler", None)  # fp16 at stage 0
        scale_before = scaler._get_scale_async().clone() if scaler is not None else None
        engine.step()
        if scaler is not None:  # GradScaler lowers its scale exactly when it skipped the step
            return scaler._get_scale_async() < scale_before
        # DeepSpeed's ZeRO optimizers record a skipped (overflowing) step as a host bool.
        return bool(getattr(engine.optimizer, "overflow", False))
    if cfg.optim.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(engine.module.parameters(), cfg.optim.grad_clip, foreach=True)
    else:  # still needed: a non-finite norm is what marks the update to skip
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    skipped = ~torch.isfinite(norm)
    optimizer.found_inf, optimizer.grad_scale = skipped.float(), None  # fused AdamW: no update where set
    try:
        engine.step()
    finally:
        del optimizer.found_inf, optimizer.grad_scale
    return skipped
