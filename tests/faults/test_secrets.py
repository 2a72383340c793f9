"""An API key in the environment never reaches stdout/stderr or any file of the run (config,
metrics, checkpoints, offline wandb files)."""

from __future__ import annotations

import os

import pytest

from tests.faults.helpers import check, command, run

pytestmark = pytest.mark.slow
SECRET = "faults-secret-7d3e1b2a9c"


def test_wandb_api_key_never_written(tmp_path, demo_shards):
    run_dir = tmp_path / "run"
    env = {"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline", "HF_TOKEN": SECRET + "-hf"}
    result = check(run(command(0, demo_shards, run_dir, "logging.wandb_mode=offline", "total_samples=24"), **env))
    assert (run_dir / "wandb").is_dir() and any((run_dir / "wandb").rglob("*.wandb")), "wandb offline wrote nothing"
    assert SECRET not in result.stdout and SECRET not in result.stderr
    leaks = [str(p) for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert os.environ.get("WANDB_API_KEY") != SECRET  # the key went to the child only
