"""Spec resolution and config validation: bad input fails at start-up with one-line errors."""
from __future__ import annotations

import pytest

from clip_pretrain.data.loader import DataConfig
from clip_pretrain.data.shards import resolve_sources, resolve_spec
from tests.data_loader.loader_helpers import take, write_shards


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_directory_split_brace_tar_and_pipe(tmp_path, make_loader):
    write_shards(tmp_path, [4, 5])
    write_shards(tmp_path, [3], split="val")
    assert [s.count for s in resolve_spec(str(tmp_path))] == [4, 5]
    assert [s.count for s in resolve_spec(f"{tmp_path}::val")] == [3]
    assert len(resolve_spec(str(tmp_path / "demo-train-{000000..000001}.tar"))) == 2
    assert resolve_spec(str(tmp_path / "demo-val-000000.tar"))[0].count is None
    loader = make_loader(f"pipe:cat {tmp_path}/demo-train-{{000000..000001}}.tar", batch_size=3)
    assert sorted(k for b in take(loader, 3) for k in b["keys"]) == sorted(
        [f"demot000_{i:04d}" for i in range(4)] + [f"demot001_{i:04d}" for i in range(5)])
    assert loader.samples_per_epoch is None


def test_list_pools_and_dicts_weight(tmp_path):
    write_shards(tmp_path / "a", [4, 4], prefix="a")
    write_shards(tmp_path / "b", [4], prefix="b")
    pooled = resolve_sources([str(tmp_path / "a"), str(tmp_path / "b")])
    assert len(pooled) == 1 and len(pooled[0].shards) == 3
    mixed = resolve_sources([{"spec": str(tmp_path / "a"), "weight": 3}, {"spec": str(tmp_path / "b")}])
    assert [(len(s.shards), s.weight) for s in mixed] == [(2, 3.0), (1, 1.0)]


def test_missing_shard(tmp_path):
    write_shards(tmp_path, [2, 2])
    with pytest.raises(FileNotFoundError) as excinfo:
        resolve_spec(str(tmp_path / "demo-train-{000000..000002}.tar"))
    assert "missing shard" in _one_line(excinfo) and "demo-train-000002.tar" in str(excinfo.value)
    (tmp_path / "demo-train-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="missing shard .*demo-train-000001.tar"):
        resolve_spec(str(tmp_path))  # manifest lists a file that is gone


def test_empty_brace_pattern_and_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        resolve_spec(str(tmp_path / "nothing-{000000..000003}.tar"))
    assert "matches no shard files" in _one_line(excinfo) and "nothing-{000000..000003}.tar" in str(excinfo.value)
    with pytest.raises(FileNotFoundError, match="matches no shard files"):
        resolve_spec(str(tmp_path / "no-such-dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        resolve_spec(str(tmp_path / "empty"))
    write_shards(tmp_path / "d", [2])
    with pytest.raises(ValueError, match="lists no 'val' shards"):
        resolve_spec(f"{tmp_path / 'd'}::val")


@pytest.mark.parametrize("fields,prefix", [
    ({"train": ""}, "train:"),
    ({"train": []}, "train:"),
    ({"train": [{"spec": "x", "weight": -1}]}, "train:"),
    ({"train": [{"spec": "x", "weight": 0.8}, {"spec": "y", "weight": 0.2}]}, "train: mixing weights need"),
    ({"train": "x", "mode": "random"}, "mode:"),
    ({"train": "x", "workers": -1}, "workers:"),
    ({"train": "x", "shuffle_buffer": 1.5}, "shuffle_buffer:"),
    ({"train": "x", "split": "test"}, "split:"),
    ({"train": "x", "fast_decode": "yes"}, "fast_decode:"),
])
def test_config_errors_name_the_field(fields, prefix):
    with pytest.raises(ValueError) as excinfo:
        DataConfig(**fields)
    assert _one_line(excinfo).startswith(prefix)
