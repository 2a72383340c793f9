"""Damaged data is skipped and counted by reason, never hangs, and never kills the stream."""
from __future__ import annotations

import os

import pytest

from tests.data_loader.loader_helpers import take, write_shards


def _pattern(root, count: int) -> str:
    """A brace pattern over the shards: a manifest spec refuses damaged tars at start-up
    (data.shards checks its counts), these tests are about damage met while streaming."""
    return str(root / f"demo-train-{{000000..{count - 1:06d}}}.tar")


def _truncate(path, keep: float) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_and_truncated_tar_are_counted(tmp_path, make_loader, caplog, workers):
    keys = write_shards(tmp_path, [10, 10, 10, 10], corrupt_keys=["demot001_0004"], manifest=False)
    _truncate(tmp_path / "demo-train-000002.tar", keep=0.5)
    loader = make_loader(_pattern(tmp_path, 4), workers=workers, batch_size=3)
    seen = []
    while loader.epoch == 0:  # all of epoch 0 (and a little of epoch 1)
        seen += [k for batch in take(loader, 1) for k in batch["keys"]]
    assert "demot001_0004" not in seen and set(seen) <= set(keys)
    assert loader.skipped.get("corrupt_image") in (1, 2)
    assert loader.skipped.get("truncated_tar") in (1, 2)
    # samples before the damage in the truncated shard are used, all other good ones too
    assert 0 < len({k for k in seen if k.startswith("demot002")}) < 10
    assert {k for k in keys if not k.startswith("demot002")} - set(seen) == {"demot001_0004"}
    if workers == 0:  # worker processes log to their own stderr
        assert "corrupt_image" in caplog.text and "demo-train-000001.tar key demot001_0004" in caplog.text


def test_unreadable_shard_is_counted(tmp_path, make_loader):
    write_shards(tmp_path, [6, 6, 6], manifest=False)
    (tmp_path / "demo-train-000000.tar").write_bytes(b"garbage, not a tar")
    loader = make_loader(_pattern(tmp_path, 3), batch_size=4)
    take(loader, 3)
    assert loader.skipped == {"unreadable_shard": 1}


@pytest.mark.parametrize("workers", [0, 1])
def test_all_shards_broken_fails_instead_of_hanging(tmp_path, make_loader, workers):
    write_shards(tmp_path, [4, 4], manifest=False)
    for name in ("demo-train-000000.tar", "demo-train-000001.tar"):
        (tmp_path / name).write_bytes(b"")
    loader = make_loader(_pattern(tmp_path, 2), workers=workers)
    with pytest.raises(RuntimeError, match="no samples in .* shards in a row"):
        take(loader, 1)


def test_all_images_corrupt_fails_instead_of_spinning(tmp_path, make_loader, monkeypatch):
    monkeypatch.setattr("clip_pretrain.data.loader.MAX_CONSECUTIVE_SKIPS", 15)
    keys = [f"demot000_{i:04d}" for i in range(8)] + [f"demot001_{i:04d}" for i in range(8)]
    write_shards(tmp_path, [8, 8], corrupt_keys=keys)
    with pytest.raises(RuntimeError, match="15 samples in a row skipped"):
        take(make_loader(str(tmp_path)), 1)
