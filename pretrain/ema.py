"""Exponential moving average (EMA) of the trainable weights, for evaluation and the final export.

The average is an fp32 copy of every trainable parameter, updated from the module after optimizer
steps (train.py's loop, outside train_step). ZeRO 0-2 only: there every rank holds the whole
module after the step (at stage 1/2 the module's weights are the working copy DeepSpeed writes back
from its fp32 master), so every rank's average is the same and rank 0's copy in the checkpoint's
client state is everyone's. ZeRO-3 partitions the parameters; TrainConfig refuses ema.decay there.
Buffers (e.g. a ResNet tower's BatchNorm statistics) and frozen weights are not averaged: the live
module's are used.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn


@dataclass
class EmaConfig:
    """ema.decay = 0 turns EMA off; ema.every_steps = optimizer steps between two EMA updates."""

    decay: float = 0.0
    every_steps: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.decay, (int, float)) and 0 <= self.decay < 1):
            raise ValueError(f"decay: must be in [0, 1) (0 turns EMA off; 0.9999 is typical), got {self.decay!r}")
        if not (isinstance(self.every_steps, int) and self.every_steps >= 1):
            raise ValueError(f"every_steps: must be an integer >= 1, got {self.every_steps!r}")

    @property
    def enabled(self) -> bool:
        return self.decay > 0


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0-based): min(decay, (1 + n) / (10 + n)).

    Why warm up: with a fixed 0.9999 the average would still be ~90% the random initial weights
    after 1000 updates; the ramp (TensorFlow's ExponentialMovingAverage num_updates rule, the same
    idea as timm's ModelEmaV3 warmup) lets the early average follow the fast-moving weights and
    reaches `decay` after 9 / (1 - decay) - 10 updates.
    """
    return min(decay, (1 + updates) / (10 + updates))


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, param) for name, param in module.named_parameters() if param.requires_grad]


class WeightEma:
    """fp32 EMA of `module`'s trainable parameters, keyed by parameter name ([same shapes])."""

    def __init__(self, module: nn.Module, cfg: EmaConfig) -> None:
        self.decay, self.every_steps = cfg.decay, cfg.every_steps
        self.reset(module)

    def reset(self, module: nn.Module) -> None:
        """Starts the average over at `module`'s current weights (warmup included)."""
        self.updates = 0  # EMA updates taken: sets the warmup decay
        self.shadow = {name: param.detach().float().clone() for name, param in _trainable(module)}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based): shadow = d * shadow + (1 - d) * weights, every
        `every_steps` steps. One foreach lerp over all tensors, no host read."""
        if step % self.every_steps:
            return
        decay = warmup_decay(self.decay, self.updates)
        self.updates += 1
        names, params = zip(*_trainable(module))
        shadows = [self.shadow[name] for name in names]
        torch._foreach_lerp_(shadows, [param.detach().float() for param in params], 1.0 - decay)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) ^ set(state["shadow"]))
        if missing:
            raise KeyError(f"EMA weights do not match the model's trainable parameters (e.g. {missing[0]})")
        self.updates = int(state["updates"])
        for name, tensor in state["shadow"].items():
            self.shadow[name].copy_(tensor)

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Inside: `module` holds the EMA weights (e.g. for evaluation); after: its own again."""
        saved = {name: param.detach().clone() for name, param in _trainable(module)}
        params = dict(_trainable(module))
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(saved[name])


@contextmanager
def ema_weights(ema: WeightEma | None, module: nn.Module) -> Iterator[None]:
    """`ema.swapped_in(module)`, or nothing when EMA is off."""
    if ema is None:
        yield
        return
    with ema.swapped_in(module):
        yield
