"""Launching pretrain.train (or the fault-injecting wrapper) as a killable process group."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

from tests.pretrain.runner import REPO, read_metrics

SMOKE = ["--config", "pretrain/configs/smoke.yaml"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
TRAIN = ["-m", "tests.faults.fault_train"]  # pretrain.train plus opt-in faults (see fault_train.py)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **extra}


def command(nproc: int, shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """torchrun with `nproc` workers (nproc=0: one plain process) running the wrapper."""
    head = [*TORCHRUN, f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
    return [*head, *TRAIN, *SMOKE, f"data.train={shards}", f"run_dir={run_dir}", *extra]


def start(cmd: list[str], log: Path, **extra_env: str) -> subprocess.Popen:
    """Starts `cmd` in its own session (so os.killpg reaches torchrun, its workers and theirs)."""
    return subprocess.Popen(cmd, cwd=REPO, env=env(**extra_env), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run(cmd: list[str], *, timeout: int = 240, **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    return result


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before the fault window:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            kill_group(process)
            raise AssertionError(f"fault window not reached in {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and all its descendants (torchrun starts each worker in a session of its own, so
    os.killpg on torchrun's group alone would leave the ranks training)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [p for p in processes if running(p)]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the whole job, as a scheduler's cgroup kill would: torchrun's session and every
    descendant (ranks, data workers); reaps the leader and waits until none is left."""
    tree = process_tree(process.pid)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)
    deadline = time.time() + 30
    while alive(tree) and time.time() < deadline:
        time.sleep(0.2)


def logged_steps(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    return [m["step"] for m in read_metrics(run_dir)]


def metrics_after(run_dir: Path, skip_lines: int) -> list[dict]:
    return read_metrics(run_dir)[skip_lines:]


def fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]
