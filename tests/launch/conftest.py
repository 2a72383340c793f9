"""Fixtures for the launch tests: a one-node SLURM cluster on this machine (launch/slurm_cluster.sh)."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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
