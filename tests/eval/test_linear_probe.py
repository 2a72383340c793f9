"""Linear probe and few-shot transfer: the pure probe, splits, and cifar10-test-2k end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_pretrain.eval import linear_probe as linear_probe_cli
from clip_pretrain.eval.checkpoints import load_checkpoint
from clip_pretrain.eval.probe import ProbeConfig, fewshot_rows, fit_logistic, holdout_split, linear_probe
from tests.eval.helpers import run_one

REPO = Path(__file__).resolve().parents[2]


def blobs(per_class: int, classes: int = 6, dim: int = 16, seed: int = 0, spread: float = 0.3):
    """Gaussian clusters around distinct unit directions: linearly separable when spread is small."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator) / dim ** 0.5
    return features, labels


def test_separable_features_score_one_and_noise_scores_chance() -> None:
    train, train_labels = blobs(40)
    test, test_labels = blobs(20, seed=1)
    metrics, sweep = linear_probe(train, train_labels, test, test_labels, 6)
    assert metrics["lp_acc1"] == 1.0 and metrics["lp_acc5"] == 1.0 and metrics["lp_mean_per_class_recall"] == 1.0
    assert metrics["weight_decay"] in sweep and set(sweep) == set(ProbeConfig().weight_decays)
    assert (metrics["epochs"], metrics["seed"], metrics["fewshot_k"]) == (100, 0, -1)
    shuffled = test_labels[torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(3))]
    chance, _ = linear_probe(train, train_labels, test, shuffled, 6)
    assert chance["lp_acc1"] < 0.4  # chance is 1/6


def test_collapsed_features_are_standardised_before_fitting() -> None:
    """A weakly trained tower puts every image within ~1e-4 of one direction; the probe must still
    find the classes (L-BFGS on the raw features stops at once: its gradients are below tolerance)."""
    train, train_labels = blobs(40)
    test, test_labels = blobs(20, seed=1)
    direction = torch.nn.functional.normalize(torch.ones(16), dim=0)
    metrics, _ = linear_probe(direction + 1e-5 * train, train_labels, direction + 1e-5 * test, test_labels, 6)
    assert metrics["lp_acc1"] == 1.0


def test_weight_decay_is_applied_and_chosen_on_held_out_rows() -> None:
    features, labels = blobs(30, spread=2.0)
    small = fit_logistic(features, labels, 6, weight_decay=1e-7).weight.norm()
    large = fit_logistic(features, labels, 6, weight_decay=1e-1).weight.norm()
    assert large < small / 5
    fit, held = holdout_split(labels, 0.2, seed=0)
    assert len(held) == 36 and torch.bincount(labels[held]).tolist() == [6] * 6  # stratified
    assert set(fit.tolist()).isdisjoint(held.tolist()) and len(fit) + len(held) == len(labels)


def test_fewshot_draws_k_per_class_seeded() -> None:
    _, labels = blobs(10)
    rows = fewshot_rows(labels, 3, seed=0)
    assert torch.bincount(labels[rows]).tolist() == [3] * 6
    assert torch.equal(rows, fewshot_rows(labels, 3, seed=0)) and not torch.equal(rows, fewshot_rows(labels, 3, seed=1))
    with pytest.raises(ValueError, match="fewshot_k: class 0 has only 10 training images, fewer than 11"):
        fewshot_rows(labels, 11, seed=0)
    features, _ = blobs(10)
    metrics, _ = linear_probe(features, labels, features, labels, 6, ProbeConfig(fewshot_k=2, seed=5))
    assert metrics["fewshot_k"] == 2 and metrics["seed"] == 5
    with pytest.raises(ValueError, match="fewshot_k: must be -1"):
        ProbeConfig(fewshot_k=0)


@pytest.mark.shared_data
def test_cifar10_probe_beats_zeroshot_and_is_deterministic(checkpoints: dict, shared_data: Path,
                                                           tmp_path: Path) -> None:
    """cifar10-test-2k split 1600/400 (stratified): the probe beats zero-shot of the same weights."""
    encoder = load_checkpoint(checkpoints["export_dir"][0])
    data = str(shared_data / "cifar10-test-2k")
    zeroshot = run_one(encoder, "zeroshot", data, classnames="cifar10", templates="cifar10", batch_size=250)
    probe = run_one(encoder, "linear_probe", data, holdout=0.2, seed=0, batch_size=250)
    assert (probe["num_train"], probe["num_samples"]) == (1600, 400)
    assert probe["metrics"]["lp_acc1"] > zeroshot["metrics"]["acc1"] + 0.1, (probe["metrics"], zeroshot["metrics"])
    again = run_one(encoder, "linear_probe", data, holdout=0.2, seed=0, batch_size=100, workers=2)
    assert again["metrics"] == probe["metrics"]
    fewshot = run_one(encoder, "linear_probe", data, holdout=0.2, seed=0, fewshot_k=5, batch_size=250)
    assert fewshot["metrics"]["fewshot_k"] == 5 and fewshot["metrics"]["lp_acc1"] < probe["metrics"]["lp_acc1"]
    out = tmp_path / "lp.json"
    linear_probe_cli.main(["--checkpoint", checkpoints["export_dir"][0], "--data", data, "--holdout", "0.2",
                           "--out", str(out), "--device", "cpu", "--workers", "0", "--batch-size", "250"])
    assert json.loads(out.read_text())["metrics"] == probe["metrics"]


def test_probe_needs_training_images(checkpoints: dict, tmp_path: Path, image_file) -> None:
    encoder = load_checkpoint(checkpoints["export_dir"][0])
    image_file("folder/cat/0.png")
    with pytest.raises(ValueError, match=r"train_data: .*folder has no separate training images; give train_data, "
                                         r"train_split, or holdout"):
        run_one(encoder, "linear_probe", str(tmp_path / "folder"))


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint exported by a short real demo run (pretrain.train, smoke config, 1536 samples)."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for args in (["-m", "clip_pretrain.data.demo", "--output", str(root / "shards"), "--num-train", "1536", "--num-val", "64",
                  "--shard-size", "256", "--no-progress"],
                 ["-m", "clip_pretrain.pretrain.train", "--config", "pretrain/configs/smoke.yaml", f"data.train={root / 'shards'}",
                  f"run_dir={root / 'run'}", "micro_batch=64", "total_samples=1536", "optim.lr=3e-3",
                  "checkpoint.every_steps=0", "checkpoint.export=true"]):
        result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "export"


@pytest.mark.slow
@pytest.mark.shared_data
def test_demo_checkpoint_probe_beats_its_zeroshot(demo_export: Path, shared_data: Path) -> None:
    """The acceptance check: cifar10-test-2k split 1600/400, the exported demo checkpoint's probe
    beats its zero-shot top-1, and a second run with the same seed gives the same numbers."""
    encoder = load_checkpoint(str(demo_export))
    data = str(shared_data / "cifar10-test-2k")
    zeroshot = run_one(encoder, "zeroshot", data, classnames="cifar10", templates="cifar10", batch_size=250)
    probe = run_one(encoder, "linear_probe", data, holdout=0.2, seed=0, batch_size=250)
    assert (probe["num_train"], probe["num_samples"]) == (1600, 400)
    assert probe["metrics"]["lp_acc1"] > zeroshot["metrics"]["acc1"] + 0.05, (probe["metrics"], zeroshot["metrics"])
    assert run_one(encoder, "linear_probe", data, holdout=0.2, seed=0, batch_size=125)["metrics"] == probe["metrics"]
