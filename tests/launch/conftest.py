"""Fixtures for the launch tests: a one-node SLURM cluster on this machine (launch/slurm_cluster.sh)."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "launch" / "slurm_cluster.sh"


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster; `env` is os.environ plus SLURM_CONF for the client commands."""

    conf: Path
    env: dict[str, str]

    def with_env(self, env: dict[str, str]) -> SlurmCluster:
        return SlurmCluster(self.conf, {**self.env, **env})

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def submit(self, *args: str) -> str:
        """`sbatch --parsable ARGS`; returns the job id (fails the test with sbatch's error)."""
        done = self.run("sbatch", "--parsable", *args)
        assert done.returncode == 0, f"sbatch {' '.join(args)} failed: {done.stderr}"
        return done.stdout.strip().split(";")[0]

    def job_field(self, job: str, field: str) -> str:
        """One `Field=value` of `scontrol show job JOB` ('' when absent)."""
        shown = self.run("scontrol", "show", "job", job).stdout
        return next((w.split("=", 1)[1] for w in shown.split() if w.startswith(f"{field}=")), "")

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
        wait_until(condition, timeout, what, log)

    def wait_for_job(self, job: str, timeout: float, log: Path | None = None) -> str:
        """Polls until JOB has ended (faster than `sbatch --wait`); returns its final JobState."""
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
        state = ""

        def done() -> bool:
            nonlocal state
            state = self.job_field(job, "JobState")
            return state in ended

        wait_until(done, timeout, f"job {job} to end (last state {state or 'unknown'})", log)
        return state


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Polls `condition` every 0.5 s; fails the test with the log's tail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log is not None and log.exists() else "(no log)"
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Bring the cluster up (installing SLURM as root where needed), skip with the reason where it can't."""
    state_dir = Path(os.environ.get("SLURM_CLUSTER_DIR", "/tmp/clip-slurm"))
    env = {**os.environ, "SLURM_CLUSTER_DIR": str(state_dir)}
    script = ["bash", str(CLUSTER_SCRIPT)]
    was_up = subprocess.run([*script, "status"], env=env, capture_output=True, check=False).returncode == 0
    try:
        up = subprocess.run([*script, "up"], env=env, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM test cluster did not come up within 300 s (launch/slurm_cluster.sh up)")
    if up.returncode != 0:
        reason = (up.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no SLURM test cluster: {reason}")
    conf = state_dir / "slurm.conf"
    env["SLURM_CONF"] = str(conf)
    yield SlurmCluster(conf=conf, env=env)
    if not was_up:
        subprocess.run([*script, "down"], env=env, capture_output=True, timeout=120, check=False)
