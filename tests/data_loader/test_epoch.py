"""Epoch mode: every sample exactly once per epoch across ranks x workers."""
from __future__ import annotations

from collections import Counter

import pytest

from clip_pretrain.data.loader import StreamPlan
from clip_pretrain.data.shards import resolve_sources

from tests.data_loader.loader_helpers import take, write_shards


def test_two_ranks_two_workers_see_each_key_once_per_epoch(tmp_path, make_loader):
    # 8 equal shards of 12 over 2 ranks x 2 workers: every slot reads 2 shards = 24 samples per
    # epoch, i.e. 6 batches of 4, so the first 6 batches of each worker are exactly epoch 0.
    keys = write_shards(tmp_path, [12] * 8)
    seen: Counter = Counter()
    for rank in (0, 1):
        loader = make_loader(str(tmp_path), rank=rank, world_size=2, workers=2)
        assert loader.num_workers == 2 and loader.samples_per_epoch == 96
        seen.update(key for batch in take(loader, 12) for key in batch["keys"])
        assert loader.epoch == 0  # all workers have finished epoch 0 exactly at their last batch
        more = take(loader, 2)
        assert loader.epoch == 1 and all(k in keys for b in more for k in b["keys"])
    assert seen == Counter(keys)


@pytest.mark.parametrize("world_size,workers", [(2, 2), (3, 1), (1, 3)])
def test_uneven_shards_each_epoch_exactly_once(tmp_path, world_size, workers):
    # Uneven shard sizes and counts: slots drift into the next epoch at different times, but
    # the items of each epoch, over all slots, are every key exactly once.
    keys = write_shards(tmp_path, [5, 9, 1, 14, 7, 3, 11])
    sources = tuple(resolve_sources(str(tmp_path)))
    for epoch in (0, 1, 2):
        seen: Counter = Counter()
        for rank in range(world_size):
            plan = StreamPlan(sources, "epoch", 7, rank, world_size, workers, shuffle_buffer=6)
            for worker in range(workers):
                for item in plan.items(worker):
                    if item["__epoch__"] > epoch:
                        break
                    if item["__epoch__"] == epoch:
                        seen[item["__key__"]] += 1
        assert seen == Counter(keys), f"epoch {epoch}"


def test_epochs_are_shuffled_differently(tmp_path, make_loader):
    write_shards(tmp_path, [10] * 4)
    loader = make_loader(str(tmp_path), batch_size=5)
    first = [k for b in take(loader, 8) for k in b["keys"]]
    second = [k for b in take(loader, 8) for k in b["keys"]]
    assert sorted(first) == sorted(second) and first != second


def test_fewer_shards_than_workers_uses_fewer_workers(tmp_path, make_loader, caplog):
    write_shards(tmp_path, [6] * 3)
    loader = make_loader(str(tmp_path), rank=1, world_size=2, workers=3)  # rank 1 gets 1 of 3 shards
    assert loader.num_workers == 1
    assert "using 1 workers instead of 3" in caplog.text


def test_more_ranks_than_shards_is_an_error(tmp_path, make_loader):
    write_shards(tmp_path, [6] * 2)
    with pytest.raises(ValueError, match="more ranks than shards in epoch mode"):
        make_loader(str(tmp_path), rank=0, world_size=3)
