"""Exact resume: after a restart from a state taken at step k, the batches from k+1 on equal the
uninterrupted run's."""
from __future__ import annotations

import io

import pytest
import torch

from tests.data_loader.loader_helpers import take, write_shards


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as in a DeepSpeed client_state."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _keys(batches: list[dict]) -> list[list[str]]:
    return [batch["keys"] for batch in batches]


def _check_resume(make, total: int, stop: int) -> None:
    reference = take(make(), total)
    first = make()
    assert _keys(take(first, stop)) == _keys(reference[:stop])
    state = _roundtrip(first.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    rest = take(resumed, total - stop)
    assert _keys(rest) == _keys(reference[stop:])
    for mine, theirs in zip(rest, reference[stop:]):
        assert torch.equal(mine["texts"], theirs["texts"]) and torch.equal(mine["images"], theirs["images"])
        if "mlm_input_ids" in theirs:
            assert torch.equal(mine["mlm_input_ids"], theirs["mlm_input_ids"])
            assert torch.equal(mine["mlm_labels"], theirs["mlm_labels"])


@pytest.mark.parametrize("workers,stop", [(0, 7), (2, 7), (2, 12), (2, 27)])
def test_resume_single_process(tmp_path, make_loader, workers, stop):
    # 90 samples in uneven shards; batch 4 -> ~22 batches per epoch: stop 27 resumes inside epoch 1
    # while worker parts of different length drift, and 36 steps cross the epoch boundary.
    write_shards(tmp_path, [13, 7, 20, 11, 16, 9, 14])
    make = lambda: make_loader(str(tmp_path), workers=workers, seed=3, mlm_probability=0.15)  # noqa: E731
    _check_resume(make, total=36, stop=stop)


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_two_ranks_two_workers(tmp_path, make_loader, rank):
    write_shards(tmp_path, [13, 7, 20, 11, 16, 9, 14, 5])
    make = lambda: make_loader(str(tmp_path), workers=2, seed=1, rank=rank, world_size=2)  # noqa: E731
    _check_resume(make, total=30, stop=11)  # ~45 samples per rank per epoch: crosses 2 epochs


def test_resume_resampled(tmp_path, make_loader):
    write_shards(tmp_path / "a", [8, 8, 8], prefix="a")
    write_shards(tmp_path / "b", [8, 8], prefix="b")
    train = [{"spec": str(tmp_path / "a"), "weight": 0.7}, {"spec": str(tmp_path / "b"), "weight": 0.3}]
    make = lambda: make_loader(train, mode="resampled", workers=2, seed=5)  # noqa: E731
    _check_resume(make, total=20, stop=9)


def test_skip_counts_survive_resume(tmp_path, make_loader):
    write_shards(tmp_path, [10, 10, 10], corrupt_keys=["demot000_0003", "demot001_0005", "demot002_0001"])
    make = lambda: make_loader(str(tmp_path), workers=0, batch_size=3)  # noqa: E731
    reference = make()
    take(reference, 18)  # 27 good samples per epoch -> 9 batches; 18 batches = 2 epochs
    assert reference.skipped == {"corrupt_image": 6}
    first = make()
    take(first, 5)
    resumed = make()
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    take(resumed, 13)
    assert resumed.skipped == reference.skipped


def test_state_mismatch_is_rejected(tmp_path, make_loader):
    write_shards(tmp_path, [6] * 4)
    state = make_loader(str(tmp_path), workers=2).state_dict()
    with pytest.raises(ValueError, match="^data state: num_slots"):
        make_loader(str(tmp_path), workers=1).load_state_dict(state)
    with pytest.raises(ValueError, match="^data state: seed"):
        make_loader(str(tmp_path), workers=2, seed=9).load_state_dict(state)
