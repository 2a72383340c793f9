"""Evaluation sharded over 2 torchrun processes (gloo) gives the metrics of 1 process.

Ranks must run the same number of forwards (ZeRO-3 gathers weights inside each), so a rank with
fewer images pads; the padding must not reach the counts or metrics.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.eval.helpers import write_shards

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES = 21  # over 2 ranks: 11 and 10 images; with batch 5: 3 and 2 batches


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                             *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def suite_file(tmp_path: Path) -> Path:
    colours = [(250, 20, 20), (20, 250, 20), (20, 20, 250)]
    samples = [{"key": f"k{i:03d}", "colour": tuple(min(255, c + 3 * i) for c in colours[i % 3]), "cls": i % 3,
                "captions": [f"a shape {i}", f"picture number {i}"]} for i in range(NUM_IMAGES)]
    samples.insert(7, {"key": "k007b", "jpg": b"broken", "cls": 0, "captions": ["x"]})
    shards = write_shards(tmp_path / "shards", samples, ["red", "green", "blue"])
    suite = {"tasks": [
        {"name": "zs", "task": "zeroshot_classification", "data": str(shards), "templates": ["a {} shape.", "{}"]},
        {"name": "rt", "task": "zeroshot_retrieval", "data": str(shards)},
        {"name": "lp", "task": "linear_probe", "data": str(shards), "holdout": 0.3, "weight_decays": [1e-4, 1e-2]},
    ]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_two_ranks_equal_one_and_step_in_lockstep(checkpoints: dict, tmp_path: Path) -> None:
    suite = suite_file(tmp_path)
    worker = str(REPO / "tests" / "eval" / "dist_worker.py")
    checkpoint = checkpoints["export_dir"][0]
    torchrun(1, [worker, checkpoint, str(suite), str(tmp_path / "one"), "5"])
    torchrun(2, [worker, checkpoint, str(suite), str(tmp_path / "two"), "5"])
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Same forward count on both ranks: rank 1 (10 readable images, 2 batches) ran a padding forward to
    # match rank 0's 3. The three tasks read the same val records, so they are encoded once.
    assert ranks[0]["image_calls"] == ranks[1]["image_calls"] == 3
    assert ranks[0]["text_calls"] == ranks[1]["text_calls"]
    assert one["image_calls"] == 5  # ceil(21 / 5)
    for record_one, record_0, record_1 in zip(one["records"], ranks[0]["records"], ranks[1]["records"]):
        assert {**record_0, "images_per_s": None} == {**record_1, "images_per_s": None}  # every rank agrees
        for key in ("num_samples", "skipped", "num_captions", "num_train", "split"):
            assert record_0.get(key) == record_one.get(key), key
        assert record_0["metrics"] == pytest.approx(record_one["metrics"], abs=1e-6), record_0["dataset"]
    assert one["records"][0]["num_samples"] == NUM_IMAGES and one["records"][0]["skipped"] == 1
    # Gathered rows are in dataset order (2 ranks x 2 decode workers each), the broken image left out.
    expected_keys = [f"k{i:03d}" for i in range(NUM_IMAGES)]
    assert one["keys"] == ranks[0]["keys"] == ranks[1]["keys"] == expected_keys
    assert one["labels"] == ranks[0]["labels"] == [i % 3 for i in range(NUM_IMAGES)]
    assert torch.allclose(torch.tensor(ranks[0]["features"]), torch.tensor(one["features"]), atol=1e-5)


def test_eval_run_cli_under_torchrun_matches_one_process(checkpoints: dict, tmp_path: Path) -> None:
    suite = suite_file(tmp_path)
    base = ["-m", "clip_pretrain.eval.run", "--checkpoint", checkpoints["export_dir"][0], "--suite", str(suite),
            "--batch-size", "5", "--workers", "1", "--device", "cpu"]
    torchrun(1, base + ["--out", str(tmp_path / "one")])
    two = torchrun(2, base + ["--out", str(tmp_path / "two")])
    assert "(2 processes)" in two.stdout
    one_records = json.loads((tmp_path / "one" / "results.json").read_text())
    two_records = json.loads((tmp_path / "two" / "results.json").read_text())
    for a, b in zip(one_records, two_records):
        assert (a["dataset"], a["num_samples"], a["skipped"]) == (b["dataset"], b["num_samples"], b["skipped"])
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
