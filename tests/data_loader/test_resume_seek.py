"""Resume cost does not grow with the position: a resumed worker re-reads the samples its shuffle
buffer held (by seeking) and the rest of one shard, never the tars it read before (issue #12, 1)."""
from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest
import torch

from clip_pretrain.data.loader import SKIP, SlotStream, StreamPlan
from clip_pretrain.data.shards import resolve_sources
from tests.data_loader.loader_helpers import take, write_shards

SHARDS, PER_SHARD, BUFFER, BATCH = 64, 4, 16, 4
MEMBERS_PER_SAMPLE = 3  # jpg, txt, json


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _largest_sample_bytes(root: Path) -> int:
    """The most bytes re-reading one sample at its offset can take: its members' headers (with their
    pax records) and data, plus the next member's header, read to see that the sample ended."""
    footprints, headers = [0], [0]
    for path in root.glob("*.tar"):
        sizes: dict[str, int] = {}
        with tarfile.open(path) as archive:
            for member in archive:
                header = member.offset_data - member.offset
                key = member.name.split(".", 1)[0]
                sizes[key] = sizes.get(key, 0) + header + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                headers.append(header)
        footprints += sizes.values()
    return max(footprints) + max(headers)


def _run(loader, steps: int, mark: int) -> tuple[list[dict], tuple, dict]:
    """``steps`` batches in one uninterrupted iteration, plus the position and the shard reads
    after batch ``mark`` (``take`` would restart the workers at each call)."""
    batches, position, reads = [], None, {}
    for batch in loader:
        batches.append(batch)
        if len(batches) == mark:
            position, reads = loader.position(), loader.shard_reads
        if len(batches) == steps:
            return batches, position, reads
    raise AssertionError("the loader stopped")


def _same_batches(mine: list[dict], theirs: list[dict]) -> None:
    assert [b["keys"] for b in mine] == [b["keys"] for b in theirs]
    for a, b in zip(mine, theirs):
        for name in ("images", "texts", "mlm_input_ids", "mlm_labels", "mlm_positions"):
            assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_in_the_third_epoch_reads_one_buffer_and_one_shard_per_worker(tmp_path, make_loader, rank):
    # 64 shards of 4 over 2 ranks x 2 workers: each worker reads 16 shards = 64 samples = 16 batches
    # per epoch, a rank 32 batches. Stop at batch 80 (epoch 2, halfway), then 6 more batches.
    write_shards(tmp_path, [PER_SHARD] * SHARDS)
    make = lambda: make_loader(str(tmp_path), workers=2, seed=4, rank=rank, world_size=2,  # noqa: E731
                               shuffle_buffer=BUFFER, batch_size=BATCH, mlm_probability=0.15)
    stop, more = 80, 6
    uninterrupted = make()
    batches, position, _ = _run(uninterrupted, stop + more, mark=stop)  # position: as data.device keeps it
    reference = batches[stop:]
    state = _roundtrip(uninterrupted.state_dict(position))
    assert [worker["epoch"] for worker in state["workers"]] == [2, 2]
    assert all(len(worker["stream"]["held"]) == BUFFER for worker in state["workers"])

    resumed = make()
    resumed.load_state_dict(state)
    # After the first batch of each worker, everything read is the resume's cost.
    rest, _, reads = _run(resumed, more, mark=2)
    _same_batches(rest, reference)
    shard_bytes = max(path.stat().st_size for path in tmp_path.glob("*.tar"))
    bound_bytes = 2 * (BUFFER * _largest_sample_bytes(tmp_path) + shard_bytes)
    assert 0 < reads["members"] <= 2 * MEMBERS_PER_SAMPLE * (BUFFER + PER_SHARD), reads
    assert reads["bytes"] <= bound_bytes, (reads, bound_bytes)

    # The same checkpoint without stream states (version 1) replays ~2.5 epochs per worker: the
    # count above is what separates the two.
    replayed = make()
    replayed.load_state_dict(_as_version_1(state))
    rest, _, replay_reads = _run(replayed, more, mark=2)
    _same_batches(rest, reference)
    assert replay_reads["members"] > 8 * reads["members"], (replay_reads, reads)


def _as_version_1(state: dict) -> dict:
    """What STATE_VERSION 1 wrote: cursors, epochs and skip counts only."""
    old = {k: v for k, v in state.items() if k != "shuffle_buffer"} | {"version": 1}
    old["workers"] = [{k: w[k] for k in ("cursor", "epoch", "skipped")} for w in state["workers"]]
    return old


def test_resampled_resume_reads_one_buffer_and_one_shard_per_worker(tmp_path, make_loader):
    write_shards(tmp_path / "a", [PER_SHARD] * 12, prefix="a")
    write_shards(tmp_path / "b", [PER_SHARD] * 6, prefix="b")
    train = [{"spec": str(tmp_path / "a"), "weight": 0.7}, {"spec": str(tmp_path / "b"), "weight": 0.3}]
    make = lambda: make_loader(train, mode="resampled", workers=2, seed=2, shuffle_buffer=BUFFER,  # noqa: E731
                               batch_size=BATCH, mlm_probability=0.15)
    uninterrupted = make()
    batches, position, _ = _run(uninterrupted, 64, mark=60)  # 30 batches per worker: ~30 draws each
    resumed = make()
    resumed.load_state_dict(_roundtrip(uninterrupted.state_dict(position)))
    rest, _, reads = _run(resumed, 4, mark=2)
    _same_batches(rest, batches[60:])
    assert 0 < reads["members"] <= 2 * MEMBERS_PER_SAMPLE * (BUFFER + PER_SHARD), reads


def _damaged_shards(root: Path) -> str:
    """7 uneven shards, one cut mid-member (truncated_tar), one not a tar (unreadable_shard)."""
    write_shards(root, [13, 7, 20, 11, 16, 9, 14], manifest=False)
    path = root / "demo-train-000002.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (root / "demo-train-000005.tar").write_bytes(b"garbage, not a tar")
    return str(root / "demo-train-{000000..000006}.tar")


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
def test_a_stream_restored_after_any_item_continues_identically(tmp_path, mode):
    # Every cut point over 3 epochs: filling, streaming, draining, epoch boundaries, skip markers
    # held in the buffer, damaged shards met again after the resume.
    sources = tuple(resolve_sources(_damaged_shards(tmp_path)))
    plan = StreamPlan(sources, mode, 1, 0, 1, 2, shuffle_buffer=6)
    reference = [_item_id(item) for item in itertools.islice(plan.items(1), 200)]
    assert any(SKIP in item for item in itertools.islice(plan.items(1), 200))
    stream = SlotStream(plan, 1)
    items = iter(stream)
    states = []
    for _ in range(190):
        next(items)
        states.append(_roundtrip(stream.state()))
    markers_held = sum(bool(state["markers"]) for state in states)
    assert markers_held > 0 and any(state["draining"] for state in states) == (mode == "epoch")
    for cut, state in enumerate(states, start=1):
        restored = SlotStream(plan, 1, state)
        assert [_item_id(item) for item in itertools.islice(restored, 10)] == reference[cut:cut + 10], cut


def _item_id(item: dict) -> tuple:
    return item["__key__"], item["__epoch__"], item["__round__"], item.get(SKIP), item.get("jpg")


def test_a_changed_shard_is_refused_in_one_line(tmp_path, make_loader):
    write_shards(tmp_path, [8] * 4, manifest=False)
    spec = str(tmp_path / "demo-train-{000000..000003}.tar")
    make = lambda: make_loader(spec, workers=0, shuffle_buffer=BUFFER)  # noqa: E731
    first = make()
    take(first, 4)
    state = first.state_dict()
    held_shard, _offset, _round = max(state["workers"][0]["stream"]["held"], key=lambda ref: ref[1])
    path = Path(first.plan.all_shards[held_shard].url)
    write_shards(tmp_path / "other", [8], seed=9, manifest=False)  # same name pattern, other bytes
    path.write_bytes((tmp_path / "other" / "demo-train-000000.tar").read_bytes()[:2048])
    resumed = make()
    resumed.load_state_dict(state)
    with pytest.raises(ValueError) as excinfo:
        take(resumed, 1)
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message and "resume with the shards it was written with" in message


def test_unknown_or_damaged_states_are_refused_in_one_line(tmp_path, make_loader):
    write_shards(tmp_path, [6] * 4)
    loader = make_loader(str(tmp_path), workers=2)
    take(loader, 2)
    state = loader.state_dict()
    with pytest.raises(ValueError, match=r"^data state: version 3 is unknown .*resume with the code that wrote"):
        make_loader(str(tmp_path), workers=2).load_state_dict(state | {"version": 3})
    broken = state | {"workers": [state["workers"][0] | {"stream": {"epoch": 0}}, state["workers"][1]]}
    with pytest.raises(ValueError, match=r"^data state: a worker's stream state lacks \['barren'"):
        make_loader(str(tmp_path), workers=2).load_state_dict(broken)
    stream = state["workers"][0]["stream"]
    for bad, problem in (({"shuffle_rng": stream["shuffle_rng"][:-1]}, "RNG state"), ({"held": [[0, 1]]}, "reference")):
        broken = state | {"workers": [state["workers"][0] | {"stream": stream | bad}, state["workers"][1]]}
        with pytest.raises(ValueError, match=f"^data state: a worker's stream state has an? .*{problem}"):
            make_loader(str(tmp_path), workers=2).load_state_dict(broken)
    with pytest.raises(ValueError, match="^data state: shuffle_buffer is 8 in the checkpoint but 16 now"):
        make_loader(str(tmp_path), workers=2, shuffle_buffer=16).load_state_dict(state)
