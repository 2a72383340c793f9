"""Retrieval: a perfect fake encoder scores 1.0; coco-mini end to end; COCO json and shards sources."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_pretrain.eval import retrieval
from clip_pretrain.eval.checkpoints import load_checkpoint
from tests.eval.helpers import run_one, write_shards

NUM_ITEMS = 12


class PerfectEncoder:
    """Image i is a solid grey of level 10*i; its captions say "item i": both embed to one_hot(i)."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.tensor([image.getpixel((0, 0))[0] / 10.0])

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(text.split()[1])] for text in texts])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(images[:, 0].round().long(), NUM_ITEMS).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(tokens[:, 0].long(), NUM_ITEMS).float()


def write_items(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(NUM_ITEMS):
        Image.new("RGB", (8, 8), (10 * i,) * 3).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "captions": [f"item {i} one", f"item {i} two", f"item {i} x"]}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "captions.jsonl"


def test_perfect_encoder_scores_one(tmp_path: Path) -> None:
    record = run_one(PerfectEncoder(), "retrieval", str(write_items(tmp_path)), batch_size=5)
    assert record["num_samples"] == NUM_ITEMS and record["num_captions"] == 3 * NUM_ITEMS
    assert all(value == 1.0 for value in record["metrics"].values()), record["metrics"]


def test_coco_json_and_shards_sources(tmp_path: Path) -> None:
    write_items(tmp_path)
    images = [{"id": 100 + i, "file_name": f"{i}.png"} for i in range(NUM_ITEMS)]
    annotations = [{"image_id": 100 + i, "id": j, "caption": f"item {i} c{j}"} for i in range(NUM_ITEMS) for j in range(2)]
    (tmp_path / "captions_val.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    record = run_one(PerfectEncoder(), "retrieval", str(tmp_path / "captions_val.json"),
                     image_root=str(tmp_path / "images"))
    assert record["num_captions"] == 2 * NUM_ITEMS and set(record["metrics"].values()) == {1.0}

    encoder = PerfectEncoder()
    encoder.preprocess = lambda image: torch.tensor([round(image.getpixel((0, 0))[0] / 10.0)])  # JPEG drift
    samples = [{"key": f"s{i}", "colour": (10 * i,) * 3, "cls": 0, "captions": [f"item {i} a", f"item {i} b"]}
               for i in range(NUM_ITEMS)]
    samples.append({"key": "broken", "jpg": b"junk", "cls": 0, "captions": ["item 0 z"]})
    shards = write_shards(tmp_path / "shards", samples, ["only"])
    record = run_one(encoder, "retrieval", str(shards), split="val")
    assert record["skipped"] == 1 and record["num_captions"] == 2 * NUM_ITEMS
    assert set(record["metrics"].values()) == {1.0}


def test_bad_retrieval_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        run_one(PerfectEncoder(), "retrieval", str(tmp_path / "absent.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        run_one(PerfectEncoder(), "retrieval", str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "x.png", "captions": []}) + "\n")
    with pytest.raises(ValueError, match="line 1: needs"):
        run_one(PerfectEncoder(), "retrieval", str(tmp_path / "bad.jsonl"))
    write_shards(tmp_path / "s", [], [])
    with pytest.raises(ValueError, match=r"no split 'train'; it has val: name one of those"):
        run_one(PerfectEncoder(), "retrieval", str(tmp_path / "s") + "::train")
    with pytest.raises(ValueError, match=r"has no splits \(split 'val' given\)"):
        run_one(PerfectEncoder(), "retrieval", str(tmp_path / "bad.jsonl"), split="val")


@pytest.mark.slow
@pytest.mark.shared_data
def test_coco_mini_end_to_end_every_kind(all_kinds: dict, checkpoints: dict, shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "coco-mini" / "captions.jsonl"
    results = []
    for kind, (checkpoint, model_name) in all_kinds.items():
        out = tmp_path / f"{kind}.json"
        argv = ["--checkpoint", checkpoint, "--data", str(data), "--out", str(out), "--max-samples", "20"]
        retrieval.main(argv + (["--model", model_name] if model_name else []))
        record = json.loads(out.read_text())
        assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
        assert set(record["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
        assert all(0.0 <= value <= 1.0 for value in record["metrics"].values())
        results.append(record["metrics"])
    assert all(metrics == results[0] for metrics in results)
    encoder = load_checkpoint(checkpoints["export_dir"][0])
    direct = run_one(encoder, "retrieval", str(shared_data / "coco-mini"), max_samples=20)
    assert direct["num_samples"] == 20 and direct["num_captions"] == 100 and direct["skipped"] == 0
    assert direct["metrics"] == results[0]
