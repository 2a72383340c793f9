"""What a finished run leaves for the ecosystem: an export open_clip loads as `local-dir:`, a Hub
folder (open_clip's Hub layout + model card), and the report rendered from the run dir. One tiny
SigLIP run (1 process, ZeRO 0, evaluation every 2 steps) serves every test here."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from tests.pretrain.runner import REPO, run_module


@pytest.fixture(scope="module")
def siglip_run(demo_shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("siglip-run")
    suite = root / "suite.yaml"
    suite.write_text((REPO / "eval" / "suites" / "demo.yaml").read_text().replace("demo_out/shards", str(demo_shards)))
    run_dir = root / "run"
    run_module(["-m", "clip_pretrain.pretrain.train", "--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}",
                f"run_dir={run_dir}", "total_samples=48", "zero.stage=0", "loss.kind=siglip", "checkpoint.every_steps=0",
                f"eval.suite={suite}", "eval.every_steps=2", "logging.backends=[jsonl, tensorboard]"])
    return run_dir


def trained_features(run_dir: Path, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The trained DualEncoder itself, rebuilt from its DeepSpeed checkpoint (not through the export)."""
    from clip_pretrain.common.checkpoint_files import _full_state_dict, resolve_checkpoint_dir
    from clip_pretrain.pretrain.losses import LossConfig
    from clip_pretrain.pretrain.model import ModelConfig, build_model

    model = build_model(ModelConfig(name="clip-tiny"), LossConfig(kind="siglip")).eval()
    model.load_state_dict(_full_state_dict(resolve_checkpoint_dir(run_dir)))
    with torch.no_grad():
        return model(images, texts)


def assert_same_model(folder: Path, run_dir: Path) -> None:
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    loaded.eval()
    texts = open_clip.get_tokenizer(f"local-dir:{folder}")(["a large red circle on the left", "a small blue square"])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = trained_features(run_dir, images, texts)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(images, normalize=True), ours["image_features"], atol=1e-5)
        assert torch.allclose(loaded.encode_text(texts, normalize=True), ours["text_features"], atol=1e-5)
    assert loaded.logit_scale.item() == pytest.approx(ours["logit_scale"].item())
    assert loaded.logit_bias is not None and loaded.logit_bias.item() == pytest.approx(ours["logit_bias"].item())
    assert preprocess.transforms[0].size in (64, (64, 64), [64, 64])  # the training run's val preprocessing


@pytest.mark.slow
def test_export_folder_loads_as_open_clip_local_dir(siglip_run: Path) -> None:
    assert_same_model(siglip_run / "export", siglip_run)


@pytest.mark.slow
def test_hub_folder_loads_and_carries_a_model_card(siglip_run: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    result = run_module(["-m", "clip_pretrain.pretrain.export_hub", str(siglip_run), str(hub)])
    assert "local-dir:" in result.stdout
    assert sorted(p.name for p in hub.iterdir()) == ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    assert_same_model(hub, siglip_run)
    card = (hub / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: open_clip\n")
    assert "kind: siglip" in card  # the training config
    assert "| demo-val-retrieval | zeroshot_retrieval |" in card and "text_retrieval_recall@1=" in card  # eval results
    assert json.loads((hub / "open_clip_config.json").read_text())["model_cfg"]["init_logit_bias"] is not None
    from clip_pretrain.eval.checkpoints import load_checkpoint  # eval reads the Hub folder as it reads an export

    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = trained_features(siglip_run, images, open_clip.get_tokenizer("clip-tiny")(["a", "b"]))["image_features"]
    assert torch.allclose(load_checkpoint(str(hub)).encode_image(images), features, atol=1e-5)


@pytest.mark.slow
def test_hub_folder_from_an_export_whose_config_lacks_init_logit_bias(siglip_run: Path, tmp_path: Path) -> None:
    """An older SigLIP export: open_clip would build no logit_bias for its weights; the Hub folder adds it."""
    import shutil

    from clip_pretrain.pretrain.export_hub import export_hub

    run_dir = tmp_path / "run"
    shutil.copytree(siglip_run, run_dir)
    config_file = run_dir / "export" / "open_clip_config.json"
    config = json.loads(config_file.read_text())
    del config["model_cfg"]["init_logit_bias"]
    config_file.write_text(json.dumps(config))
    assert_same_model(export_hub(run_dir, tmp_path / "hub"), run_dir)


@pytest.mark.slow
def test_hub_folder_from_a_run_without_export(siglip_run: Path, tmp_path: Path) -> None:
    """checkpoint.export=false: the weights come from the newest checkpoint, consolidated."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(siglip_run, run_dir, ignore=shutil.ignore_patterns("export"))
    from clip_pretrain.pretrain.export_hub import export_hub

    hub = export_hub(run_dir, tmp_path / "hub")
    assert_same_model(hub, run_dir)


def test_hub_folder_from_nothing_is_one_line(tmp_path: Path) -> None:
    result = run_module(["-m", "clip_pretrain.pretrain.export_hub", str(tmp_path), str(tmp_path / "hub")], check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
def test_report_renders_from_the_run_dir(siglip_run: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    from clip_pretrain.pretrain.report import find_images, last_eval

    result = run_module(["-m", "clip_pretrain.pretrain.report", str(siglip_run), "--out", str(tmp_path / "report")])
    png = tmp_path / "report" / "report.png"
    assert f"wrote {png}" in result.stdout
    image = Image.open(png)
    assert image.width > 800 and image.height > 800 and png.stat().st_size > 40_000
    assert max(ImageStat.Stat(image.convert("L")).stddev) > 20  # drawn on, not a blank canvas
    assert "src='report.png'" in (tmp_path / "report" / "report.html").read_text()
    # The retrieval grid: the last evaluation kept top-k examples, and their images are found in the shards.
    examples = next(r for r in last_eval(siglip_run) if r["task"] == "zeroshot_retrieval")
    keys = {hit["key"] for example in examples["examples"] for hit in example["retrieved"]}
    assert len(examples["examples"]) >= 4 and all(len(e["retrieved"]) == 4 for e in examples["examples"])
    assert set(find_images(examples["data"], examples["split"], keys)) == keys


@pytest.mark.slow
def test_training_run_writes_tensorboard_events(siglip_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(siglip_run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 7))
    assert {"lr", "temperature", "logit_bias", "eval/demo-val-zeroshot/acc1"} <= set(events.Tags()["scalars"])


def test_report_reads_one_history_across_resumes(tmp_path: Path) -> None:
    import matplotlib

    from clip_pretrain.pretrain.report import read_metrics, render

    lines = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)] + [{"event": "resume", "step": 2}, {"step": 3, "loss": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 0.2)]
    assert render(tmp_path).is_file()  # no eval, no examples: those panels say so
    assert matplotlib.get_backend().lower() == "agg"


def test_report_without_metrics_is_one_line(tmp_path: Path) -> None:
    result = run_module(["-m", "clip_pretrain.pretrain.report", str(tmp_path)], check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "metrics.jsonl not found" in result.stderr
