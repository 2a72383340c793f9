"""Resampled mode: sources drawn by their mixing weights."""
from __future__ import annotations

from tests.data_loader.loader_helpers import take, write_shards


def test_mixing_weights_are_respected(tmp_path, make_loader):
    # Stated tolerance: +-5 percentage points over ~2000 samples. Shards of 10 give ~200 source
    # draws, whose binomial sd for p=0.8 is ~2.8 points.
    write_shards(tmp_path / "a", [10] * 4, prefix="a")
    write_shards(tmp_path / "b", [10] * 4, prefix="b")
    train = [{"spec": str(tmp_path / "a"), "weight": 0.8}, {"spec": str(tmp_path / "b"), "weight": 0.2}]
    loader = make_loader(train, mode="resampled", workers=2, batch_size=50, shuffle_buffer=20)
    keys = [k for batch in take(loader, 40) for k in batch["keys"]]
    share_a = sum(k.startswith("a") for k in keys) / len(keys)
    assert len(keys) == 2000 and abs(share_a - 0.8) <= 0.05, share_a
    assert loader.epoch == 0


def test_workers_draw_different_streams(tmp_path, make_loader):
    write_shards(tmp_path, [10] * 6)
    loader = make_loader(str(tmp_path), mode="resampled", workers=2, batch_size=10, shuffle_buffer=0)
    first, second = (batch["keys"] for batch in take(loader, 2))
    assert first != second
