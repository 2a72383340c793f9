"""Runs pretrain.train and friends for real in subprocesses (torchrun, gloo, DeepSpeed on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_module(args: list[str], *, timeout: int = 300, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m ...` from the repo root with CPU DeepSpeed settings."""
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
    return result


def torchrun(nproc: int, train_args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_module(
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "clip_pretrain.pretrain.train", *train_args],
        **kwargs,
    )


def run_one_rank_script(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python -c script` as rank 0 of a world of 1 (the env DeepSpeed's init reads), on a free port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    """The metric records of RUN/metrics.jsonl, without its resume/restart marker lines."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [record for record in records if "event" not in record]


