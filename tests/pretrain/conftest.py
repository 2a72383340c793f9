"""Fixtures for tests that run pretrain.train for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pretrain.runner import run_module


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """Small generated shapes shards (train + val split with class labels)."""
    out = tmp_path_factory.mktemp("demo") / "shards"
    run_module(["-m", "clip_pretrain.data.demo", "--output", str(out), "--num-train", "320", "--num-val", "96", "--shard-size", "40"])
    return out
