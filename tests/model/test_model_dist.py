"""Multi-process gloo runs: per-rank losses/gradients equal one process on the global batch.

Convention checked (what DeepSpeed/DDP does): the engine averages gradients over ranks, so
mean_r(loss_r) == global loss, grad(features_r) / world_size == d(global loss)/d(features_r)
and mean_r(grad logit_scale_r) == the single-process gradient.
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clip_pretrain.pretrain.losses import clip_loss, siglip_loss

PER_RANK, DIM = 3, 8
CASES = ("clip_gather", "clip_local", "siglip")


def global_batch(world_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    images = F.normalize(torch.randn(world_size * PER_RANK, DIM, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(world_size * PER_RANK, DIM, generator=generator), dim=-1)
    return images, texts, torch.tensor([math.log(10.0)]), torch.tensor([-2.0])


def run_case(case: str, images, texts, raw, bias, rank: int, world_size: int) -> dict[str, torch.Tensor]:
    images, texts, raw, bias = (t.clone().requires_grad_(True) for t in (images, texts, raw, bias))
    if case == "siglip":
        loss = siglip_loss(images, texts, raw, bias, rank=rank, world_size=world_size)
    else:
        loss = clip_loss(images, texts, raw, rank=rank, world_size=world_size, local_loss=case == "clip_local")
    loss.backward()
    grads = {"images": images.grad, "texts": texts.grad, "raw": raw.grad}
    grads["bias"] = bias.grad if bias.grad is not None else torch.zeros_like(bias)
    return {"loss": loss.detach(), **grads}


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        images, texts, raw, bias = global_batch(world_size)
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = {case: run_case(case, images[local], texts[local], raw, bias, rank, world_size) for case in CASES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])  # 3 exercises SigLIP's bidirectional exchange
def test_distributed_losses_equal_single_process(world_size: int, tmp_path: Path) -> None:
    mp.spawn(worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    images, texts, raw, bias = global_batch(world_size)
    for case in CASES:
        single = run_case(case, images, texts, raw, bias, 0, 1)
        per_rank = [r[case] for r in ranks]
        assert torch.allclose(torch.stack([r["loss"] for r in per_rank]).mean(), single["loss"], atol=1e-5), case
        for key in ("raw", "bias"):
            assert torch.allclose(torch.stack([r[key] for r in per_rank]).mean(0), single[key], atol=1e-5), (case, key)
        for key in ("images", "texts"):
            gathered = torch.cat([r[key] for r in per_rank]) / world_size
            assert torch.allclose(gathered, single[key], atol=1e-5), (case, key)
