"""Gradient accumulation with a feature cache (`loss.accum_features`): the contrastive negatives
span the whole accumulated batch, as open_clip_train's --accum-freq does.

One optimizer step over K = grad_accum micro-batches takes two passes:
1. each micro-batch goes forward without autograd; its features are kept (the torch RNG state
   before that forward is saved too);
2. each micro-batch j goes forward again with autograd, from its saved RNG state (so dropout and
   patch-dropout masks repeat pass 1's), its fresh features replace its cached ones, and the
   loss of the whole accumulated batch (K micro-batches on every rank) is backpropagated.

Each pass-2 loss is the full-batch loss, and only micro-batch j's features carry gradient in it,
so the tower gradients of the K backward passes add up to the full-batch gradient: DeepSpeed's
1/K loss scaling is turned off (`scale_wrt_gas=False`). logit_scale / logit_bias enter all K
losses directly, and each MLM term would be counted at weight 1 instead of 1/K: their gradients
are scaled by 1/K with their values left as they are. Nothing is read back from the device.
"""
from __future__ import annotations

import time
from typing import Iterator

import torch

from clip_pretrain.pretrain import step
from clip_pretrain.pretrain.config import TrainConfig
from clip_pretrain.pretrain.losses import compute_objective

CACHED = ("image_features", "text_features")
DIRECT = ("logit_scale", "logit_bias", "mlm_logits")  # in every pass-2 loss, or MLM (1/K per micro-batch)
RngState = tuple[torch.Tensor, torch.Tensor | None, torch.device]


def cached_train_step(engine, optimizer: torch.optim.Optimizer, batches: Iterator[dict], cfg: TrainConfig,
                      rank: int, world_size: int, metrics: step.StepMetrics) -> int:
    """Same contract as `step.train_step`: feeds grad_accum micro-batches, DeepSpeed takes one
    optimizer step (or skips it); returns the samples this rank consumed. No host read."""
    if engine.micro_steps % cfg.grad_accum:  # a host int: the K backward passes must end on the boundary
        raise RuntimeError(f"loss.accum_features: engine is {engine.micro_steps % cfg.grad_accum} micro-batches "
                           "into an accumulation; every step of the run must go through cached_train_step")
    micro_batches = [_fetch(batches, metrics) for _ in range(cfg.grad_accum)]
    rng_states, cached = _first_pass(engine, micro_batches)
    for index, batch in enumerate(micro_batches):
        _set_rng_state(rng_states[index])
        outputs = _spliced(engine(**_model_inputs(batch)), cached, index, cfg.grad_accum)
        loss, parts = compute_objective(outputs, batch, cfg.loss, rank, world_size)
        # Every micro-batch is logged, as in train_step: each loss is the same full-batch
        # contrastive value plus this micro-batch's MLM term, so the interval mean is what the
        # uncached path logs (mean over micro-batches) and finite-batch counting stays the same.
        metrics.add_micro_batch(loss, parts, torch.isfinite(loss))
        engine.backward(loss, scale_wrt_gas=False)
        if engine.is_gradient_accumulation_boundary():
            metrics.add_step(step._apply_update(engine, optimizer, cfg))
        else:
            engine.step()  # DeepSpeed only counts the micro-batch here
    return sum(batch["images"].shape[0] for batch in micro_batches)


def _fetch(batches: Iterator[dict], metrics: step.StepMetrics) -> dict:
    started = time.perf_counter()
    batch = next(batches)
    metrics.data_wait_s += time.perf_counter() - started
    return batch


def _first_pass(engine, micro_batches: list[dict]) -> tuple[list[RngState], list[dict]]:
    """(RNG state before each forward, each micro-batch's features [b, D]) from no-grad forwards."""
    rng_states, cached = [], []
    for batch in micro_batches:
        rng_states.append(_rng_state(batch["images"].device))
        with torch.no_grad():
            outputs = engine(**_model_inputs(batch))
        cached.append({name: outputs[name] for name in CACHED})
    return rng_states, cached


def _model_inputs(batch: dict) -> dict:
    # Pass 1 runs the MLM forward too: the same module sequence in both passes keeps ZeRO-3's
    # prefetch trace valid and the RNG draws in the same order.
    return {name: batch[name] for name in step.MODEL_INPUTS if name in batch}


def _spliced(outputs: dict, cached: list[dict], index: int, accum: int) -> dict:
    """Outputs of micro-batch `index` with its features placed among the cached ones ([K*b, D],
    micro-batch order) and the gradients of the terms every pass-2 loss repeats scaled by 1/K."""
    spliced = dict(outputs)
    for name in CACHED:
        spliced[name] = torch.cat([outputs[name] if j == index else part[name] for j, part in enumerate(cached)])
    for name in DIRECT:
        if outputs.get(name) is not None:
            spliced[name] = scale_gradient(outputs[name], 1 / accum)
    return spliced


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """`x` with exactly its value (x - x.detach() is 0) and `factor` times its gradient."""
    detached = x.detach()
    return detached + (x - detached) * factor


def _rng_state(device: torch.device) -> RngState:
    # Generator states are host-side (CUDA's is a seed and an offset): saving them reads no device value.
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda, device


def _set_rng_state(state: RngState) -> None:
    cpu, cuda, device = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
