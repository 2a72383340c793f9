"""Fixtures for the fault tests: demo shards and one uninterrupted 2-process reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import SMOKE, TORCHRUN, check, run
from tests.pretrain.runner import read_metrics, run_module


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """Small generated shapes shards: 8 train shards of 40 (320 samples) + 96 val, with labels."""
    out = tmp_path_factory.mktemp("demo") / "shards"
    run_module(["-m", "clip_pretrain.data.demo", "--output", str(out), "--num-train", "320", "--num-val", "96", "--shard-size", "40"])
    return out


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, demo_shards) -> Path:
    """The smoke config, 2 processes, ZeRO 2, uninterrupted: 6 steps, checkpoints at steps 3 and 6.
    Read-only for tests: copy it before resuming from it."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    check(run([*TORCHRUN, "--nproc_per_node=2", "-m", "clip_pretrain.pretrain.train", *SMOKE, f"data.train={demo_shards}",
               f"run_dir={run_dir}"]))
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    return run_dir
