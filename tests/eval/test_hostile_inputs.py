"""Hostile evaluation inputs: each is refused in one line before any model work, never a traceback
or a silently wrong number."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clip_pretrain.eval.datasets import EvalDataset, coco_records

REPO = Path(__file__).resolve().parents[2]


def test_duplicate_class_names_are_refused():
    with pytest.raises(ValueError, match="class name 'cat' appears more than once"):
        EvalDataset("pets", records=[], classnames=["cat", "dog", "cat"])
    EvalDataset("pets", records=[], classnames=["cat", "dog"])


def test_coco_annotation_without_caption_is_one_line(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 1, "id": 7}]}))
    with pytest.raises(ValueError, match=r"annotation #1 has no \"image_id\" and string \"caption\""):
        coco_records(path, tmp_path)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("module", ["clip_pretrain.eval.zeroshot", "clip_pretrain.eval.retrieval"])
def test_out_that_is_a_directory_is_refused_before_work(module, tmp_path):
    result = cli(module, "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --out {tmp_path} is a directory"), result.stderr


def test_suite_out_that_is_a_file_is_refused_before_work(tmp_path):
    taken = tmp_path / "results"
    taken.write_text("not a folder")
    result = cli("clip_pretrain.eval.run", "--checkpoint", str(tmp_path / "missing.pt"), "--suite", "eval/suites/demo.yaml",
                 "--out", str(taken))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --out {taken} is a file"), result.stderr
    assert taken.read_text() == "not a folder"
