"""No silent wrong split: a shard dir with train and val evaluates val unless told, and says so."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from clip_pretrain.eval import zeroshot
from clip_pretrain.eval.datasets import load_classification, load_retrieval
from tests.eval.helpers import add_tar_member, jpeg_bytes


def two_split_shards(folder: Path) -> Path:
    """clip_pretrain.data.build's layout with a train shard (4 samples) and a val shard (2 samples)."""
    folder.mkdir(parents=True)
    shards = []
    for split, count in (("train", 4), ("val", 2)):
        name = f"d-{split}-000000.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(count):
                key = f"{split}{i}"
                add_tar_member(tar, f"{key}.jpg", jpeg_bytes((50 * i, 90, 200)))
                add_tar_member(tar, f"{key}.cls", str(i % 2).encode())
                add_tar_member(tar, f"{key}.json", json.dumps({"captions": [f"{split} {i}"]}).encode())
        shards.append({"file": name, "split": split, "count": count})
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "shards": shards}))
    (folder / "classnames.json").write_text(json.dumps(["cat", "dog"]))
    return folder


def test_unnamed_split_reads_val_and_says_so(tmp_path: Path) -> None:
    folder = two_split_shards(tmp_path / "shards")
    for dataset in (load_classification(str(folder)), load_retrieval(str(folder))):
        assert dataset.split == "val" and [record.key for record in dataset.records] == ["val0", "val1"]
        assert dataset.split_note.endswith("has splits train, val and none was named: evaluating 'val' "
                                           "(name one with DIR::SPLIT or --split)")
    named = load_classification(f"{folder}::train")
    assert named.split == "train" and named.split_note == "" and len(list(named.records)) == 4
    assert load_classification(str(folder), split="train").split == "train"
    with pytest.raises(ValueError, match=r"names split 'train' but --split/split says 'val'"):
        load_classification(f"{folder}::train", split="val")
    with pytest.raises(ValueError, match=r"no split 'test'; it has train, val: name one of those"):
        load_classification(str(folder), split="test")


def test_cli_prints_the_default_split(checkpoints: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = two_split_shards(tmp_path / "shards")
    out = tmp_path / "r.json"
    zeroshot.main(["--checkpoint", checkpoints["export_dir"][0], "--data", str(folder), "--templates", "simple",
                   "--out", str(out), "--device", "cpu", "--workers", "0"])
    printed = capsys.readouterr().out
    assert "note: " in printed and "evaluating 'val'" in printed and "(2 images, 0 skipped, split val)" in printed
    assert json.loads(out.read_text())["task"] == "zeroshot_classification"
