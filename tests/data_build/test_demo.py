"""Tests of the generated demo dataset (data.demo)."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from clip_pretrain.data.demo import COLOURS, class_names, demo_keys, generate_demo, main, make_sample
from tests.data_build.helpers import read_build


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(output.glob("demo-*.tar"))}


def test_demo_builds_labelled_shards(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    stats = generate_demo(str(output), num_train=40, num_val=10, seed=3, shard_size=16, progress=False)
    assert stats["totals"] == {"train": 40, "val": 10} and stats["kept"] == 50
    manifest = json.loads((output / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"] if s["split"] == "train"] == [16, 16, 8]
    classnames = json.loads((output / "classnames.json").read_text())
    assert classnames == class_names() and len(classnames) == 30
    templates = json.loads((output / "zeroshot_templates.json").read_text())
    assert templates and all("{c}" in template for template in templates)
    for key, sample in read_build(output).items():
        meta = json.loads(sample["json"])
        assert classnames[int(sample["cls"])] == meta["label"]
        assert all(meta["label"] in caption.lower() for caption in meta["captions"])  # class name is learnable
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.size == (64, 64) and image.mode == "RGB"


def test_demo_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for output, seed in ((first, 7), (second, 7), (other, 8)):
        generate_demo(str(output), num_train=20, num_val=5, seed=seed, shard_size=10, progress=False)
    assert shard_bytes(first) == shard_bytes(second)
    assert (first / "manifest.json").read_text() == (second / "manifest.json").read_text()
    assert shard_bytes(first) != shard_bytes(other)


def test_shape_is_drawn_in_its_colour() -> None:
    for index in range(20):
        image, captions, label = make_sample(random.Random(index))
        colour = label.split()[0]
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        distance = np.abs(pixels - np.array(COLOURS[colour])).sum(axis=1)
        assert (distance < 60).sum() > 40, label  # a visible blob of the named colour
        assert len(captions) == 2 and len(set(captions)) == 2


def test_demo_keys_give_exact_split_sizes() -> None:
    keys = demo_keys(30, 7)
    assert len(keys) == len(set(keys)) == 37


def test_cli(tmp_path: Path, capsys) -> None:
    assert main(["--output", str(tmp_path / "d"), "--num-train", "8", "--num-val", "2", "--no-progress"]) == 0
    assert "8 train / 2 val" in capsys.readouterr().out
    assert main(["--output", str(tmp_path / "e"), "--num-train", "0"]) == 2


def test_learning_curve_figure(tmp_path: Path) -> None:
    from clip_pretrain.pretrain.report import main as report_main

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 4.0 / s, "samples_seen": 64 * s} for s in range(10, 60, 10)]
    rows += [{"step": s, "eval/demo-val-zeroshot/acc1": s / 50,
              "eval/demo-val-retrieval/text_retrieval_recall@1": s / 200} for s in (25, 50)]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "curve.png"
    assert report_main([str(tmp_path), "--curve", str(out)]) == 0
    assert Image.open(out).size[0] > 300
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows[:5]))  # no evaluation rows
    assert report_main([str(tmp_path), "--curve", str(out)]) == 2
