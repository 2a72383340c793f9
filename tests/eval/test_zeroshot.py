"""Zero-shot classification: parity with open_clip, every dataset kind, CLI, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clip_pretrain.eval import zeroshot
from clip_pretrain.eval.checkpoints import load_checkpoint
from clip_pretrain.eval.prompts import load_classnames, load_templates
from tests.eval.helpers import cifar_subset_csv, run_one, write_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.shared_data
@pytest.mark.parametrize("kind", ["pt_with_config", "model_name_and_file"])
def test_matches_open_clip_build_zero_shot_classifier(kind: str, checkpoints: dict, tiny_model: torch.nn.Module,
                                                       shared_data: Path, tmp_path: Path) -> None:
    csv_path = cifar_subset_csv(shared_data, tmp_path / "subset.csv", per_class=20)
    classnames, templates = load_classnames("cifar10"), load_templates("cifar10")
    # Reference: open_clip's own classifier builder and a manual accuracy loop.
    tokenizer = open_clip.get_tokenizer("eval-tiny-vit")
    preprocess = image_transform_v2(PreprocessCfg(**tiny_model.visual.preprocess_cfg), is_train=False)
    reference_classifier = open_clip.build_zero_shot_classifier(tiny_model, tokenizer, classnames, templates)
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    images = torch.stack([preprocess(Image.open(path)) for path, _ in rows])
    labels = torch.tensor([classnames.index(label) for _, label in rows])
    with torch.no_grad():
        logits = 100.0 * tiny_model.encode_image(images, normalize=True) @ reference_classifier
    top5 = logits.topk(5, dim=1).indices
    want_acc1 = (top5[:, 0] == labels).float().mean().item()
    want_acc5 = (top5 == labels[:, None]).any(dim=1).float().mean().item()

    checkpoint, model_name = checkpoints[kind]
    encoder = load_checkpoint(checkpoint, model_name=model_name)
    torch.testing.assert_close(zeroshot.build_classifier(encoder, classnames, templates, batch_size=37),
                               reference_classifier, atol=1e-5, rtol=1e-5)
    record = run_one(encoder, "zeroshot", str(csv_path), classnames="cifar10", templates="cifar10", batch_size=50)
    assert record["num_samples"] == 200 and record["skipped"] == 0
    assert record["metrics"]["acc1"] == pytest.approx(want_acc1)
    assert record["metrics"]["acc5"] == pytest.approx(want_acc5)
    assert record["task"] == "zeroshot_classification"


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_loads_every_checkpoint_kind(all_kinds: dict, shared_data: Path, tmp_path: Path) -> None:
    csv_path = cifar_subset_csv(shared_data, tmp_path / "subset.csv", per_class=2)
    kinds = all_kinds
    results = {}
    for kind, (checkpoint, model_name) in kinds.items():
        out = tmp_path / f"{kind}.json"
        argv = ["--checkpoint", checkpoint, "--data", str(csv_path), "--out", str(out), "--templates", "simple"]
        zeroshot.main(argv + (["--model", model_name] if model_name else []))
        record = json.loads(out.read_text())
        assert record["pretrained"] == checkpoint and record["task"] == "zeroshot_classification"
        results[kind] = record["metrics"]
    assert all(metrics == results["pt_with_config"] for metrics in results.values())


def test_shards_imagefolder_custom_lists_and_skips(checkpoints: dict, tmp_path: Path, image_file) -> None:
    encoder = load_checkpoint(*checkpoints["export_dir"][:1])
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    samples = [{"key": f"k{i}", "colour": colours[i % 3], "cls": i % 3, "captions": [f"c{i}"]} for i in range(9)]
    samples.append({"key": "broken", "jpg": b"not a jpeg", "cls": 0, "captions": ["x"]})
    shards = write_shards(tmp_path / "shards", samples, ["red", "green", "blue"])
    (tmp_path / "templates.json").write_text(json.dumps(["a photo of a {c}.", "a {}."]))
    record = run_one(encoder, "zeroshot", f"{shards}::val", templates=str(tmp_path / "templates.json"))
    assert record["num_samples"] == 9 and record["skipped"] == 1
    assert "acc5" not in record["metrics"]

    for i, colour in enumerate(colours):
        image_file(f"folder/{['red', 'green', 'blue'][i]}/{i}.png", colour)
    (tmp_path / "folder" / "blue" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    record = run_one(encoder, "zeroshot", str(tmp_path / "folder"), classnames=str(tmp_path / "names.txt"),
                     templates=["{} colour"])
    assert record["num_samples"] == 3 and record["skipped"] == 1


def test_bad_inputs_are_one_line_errors(checkpoints: dict, tmp_path: Path, image_file) -> None:
    encoder = load_checkpoint(checkpoints["export_dir"][0])
    image_file("a.png")
    (tmp_path / "labels.csv").write_text("path,label\na.png,cat\na.png,zebra\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=r"unknown class 'zebra' in .*labels.csv row 2"):
        run_one(encoder, "zeroshot", str(tmp_path / "labels.csv"), classnames=str(tmp_path / "names.txt"))
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    (tmp_path / "folder" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"unknown class 'zebra' in folder .*zebra"):
        run_one(encoder, "zeroshot", str(tmp_path / "folder"), classnames=str(tmp_path / "names.txt"))
    with pytest.raises(ValueError, match=r"dataset .*folder is empty"):
        run_one(encoder, "zeroshot", str(tmp_path / "folder"))
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        run_one(encoder, "zeroshot", str(tmp_path / "absent"))
    (tmp_path / "only_bad" / "cat").mkdir(parents=True)
    (tmp_path / "only_bad" / "cat" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="all 1 images were unreadable"):
        run_one(encoder, "zeroshot", str(tmp_path / "only_bad"))
    (tmp_path / "bad_templates.txt").write_text("no slot here\n")
    with pytest.raises(ValueError, match="has no '{}' slot"):
        run_one(encoder, "zeroshot", str(tmp_path / "labels.csv"), templates=str(tmp_path / "bad_templates.txt"))


@pytest.mark.slow
def test_cli_prints_error_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "clip_pretrain.eval.zeroshot", "--checkpoint", str(tmp_path / "nope.bin"),
                             "--data", str(tmp_path), "--out", str(tmp_path / "r.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint not found") and result.stderr.count("\n") == 1
