"""Process-group setup for torchrun, srun and plain single-process runs; NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from clip_pretrain.launch.env import apply_dist_env, resolve_dist_env


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(local_rank: int) -> torch.device:
    """CUDA when present and not forced off by DS_ACCELERATOR=cpu, else CPU."""
    if os.environ.get("DS_ACCELERATOR", "") != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed reads this at import time
    return torch.device("cpu")


def init_distributed() -> DistContext:
    """Joins the process group described by the launcher's environment (always, also for 1 process:
    DeepSpeed needs one)."""
    env = resolve_dist_env(os.environ)
    if env.launcher == "single" and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
        env = resolve_dist_env(os.environ)  # else apply_dist_env writes back the default 29500
    apply_dist_env(env, os.environ)
    device = pick_device(env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        import deepspeed  # imported late: DS_ACCELERATOR must be final first

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistContext(env.rank, env.world_size, env.local_rank, device, backend, env.launcher)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (small Python objects: loader and RNG state)."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def all_true(flag: bool, device: torch.device) -> bool:
    """True only when `flag` holds on every rank (ranks must agree to skip a step)."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def any_true(flag: bool, device: torch.device) -> bool:
    return not all_true(not flag, device)


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
