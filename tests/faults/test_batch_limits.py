"""Degenerate sizes: a micro-batch larger than the whole dataset, more ranks than shards."""

from __future__ import annotations

import pytest

from tests.faults.helpers import TORCHRUN, SMOKE, check, command, error_lines, run
from tests.pretrain.runner import read_metrics

pytestmark = pytest.mark.slow


def test_micro_batch_larger_than_dataset_is_one_line(tmp_path, demo_shards):
    """With a manifest the epoch size is known: a micro-batch larger than it is refused."""
    result = run(command(0, demo_shards, tmp_path / "run", "micro_batch=400", "checkpoint.every_steps=0"))
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "micro_batch: 400 x 1 processes is more than one epoch of data (320 samples)" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_micro_batch_larger_than_unknown_size_dataset_runs_across_epochs(tmp_path, demo_shards):
    """Without a manifest the epoch size is unknown until read: the loader's streams are infinite and
    batches run on across the epoch boundary (data/loader.py), so a 64-sample micro-batch over a
    40-sample shard trains, each batch spanning epochs."""
    run_dir = tmp_path / "run"
    check(run(command(0, demo_shards / "demo-train-000000.tar", run_dir, "micro_batch=64", "total_samples=128",
                      "checkpoint.every_steps=0")))
    metrics = read_metrics(run_dir)
    assert [(m["step"], m["samples_seen"]) for m in metrics] == [(1, 64), (2, 128)]


def test_more_ranks_than_shards_in_epoch_mode_is_one_line(tmp_path, demo_shards):
    result = run([*TORCHRUN, "--nproc_per_node=2", "-m", "clip_pretrain.pretrain.train", *SMOKE,
                  f"data.train={demo_shards / 'demo-train-000000.tar'}", f"run_dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 2  # one per rank
    for line in lines:
        assert "more ranks than shards in epoch mode (2 ranks, 1 shards)" in line and "resampled" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
