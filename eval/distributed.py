"""Rank sharding for evaluation: who am I, is anyone still working, gather rows in global order.

Works with whatever process group is already initialised (training's DeepSpeed group, or the one
`init_from_env` starts under torchrun); without one every call is the single-process identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_from_env(device: str | torch.device) -> Ranks:
    """Start a process group when launched by torchrun (WORLD_SIZE > 1) and none exists yet."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current_ranks()


def shutdown(ranks: Ranks) -> None:
    """Tear down a process group this module started (a no-op in one process)."""
    if ranks.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on at least one rank (a collective: every rank must call it)."""
    if current_ranks().world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(value: int) -> int:
    if current_ranks().world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.long, device=_comm_device())
    dist.all_reduce(total)
    return int(total.item())


def gather_objects(value: object) -> list[object]:
    """Every rank's `value`, in rank order (small metadata only: it is pickled)."""
    ranks = current_ranks()
    if ranks.world_size == 1:
        return [value]
    out: list[object] = [None] * ranks.world_size
    dist.all_gather_object(out, value)
    return out


def gather_rows(rows: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's rows [n_r, ...] (n_r may differ), in rank order, on the CPU."""
    ranks = current_ranks()
    if ranks.world_size == 1:
        return [rows.cpu()]
    counts = [int(n) for n in gather_objects(rows.shape[0])]
    device = _comm_device()
    # all_gather needs equal shapes: pad to the longest rank, then cut each back to its count.
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(parts, padded)
    return [part[:count].cpu() for part, count in zip(parts, counts)]
