"""2-process training under ZeRO 0/2/3 on CPU: save, resume, exact loss continuation, export."""

from __future__ import annotations

import shutil

import open_clip
import pytest
import torch

from clip_pretrain.common.checkpoint_files import COMPLETE, LATEST, consolidated_state_dict, read_model_config
from tests.pretrain.runner import REPO, read_metrics, torchrun

pytestmark = pytest.mark.slow


def losses(run_dir, first_step: int) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if m["step"] >= first_step}


def assert_resume_from_step3_is_exact(full, resumed, launch) -> None:
    """Copies the finished 6-step run `full` to `resumed` as if interrupted after its step-3
    checkpoint, continues it with `launch(run_dir_args)` and compares the losses of steps 4-6."""
    reference = losses(full, 1)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000006")
    shutil.rmtree(resumed / "export", ignore_errors=True)
    (resumed / "checkpoints" / LATEST).write_text("step_00000003")
    (resumed / "metrics.jsonl").write_text("")
    launch([f"run_dir={resumed}", "--resume", "auto"])
    after = losses(resumed, 1)
    assert sorted(after) == [4, 5, 6]
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(reference[step], abs=1e-5), (step, after, reference)


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_resume_continues_the_loss_exactly(stage, demo_shards, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = ["--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}", f"zero.stage={stage}", "data.workers=2"]
    torchrun(2, [*args, f"run_dir={full}"])
    # Same run, interrupted after the step-3 checkpoint: keep only that one, then --resume auto.
    assert_resume_from_step3_is_exact(full, resumed, lambda extra: torchrun(2, [*args, *extra]))

    # The export loads in open_clip and matches the consolidated checkpoint.
    config = read_model_config(full / "export")
    open_clip.add_model_config(str(REPO / "pretrain" / "model_configs"))
    weights = consolidated_state_dict(full)
    assert (full / "checkpoints" / "step_00000006" / COMPLETE).is_file()
    # No unpickling recovery scripts left beside the checkpoints (DeepSpeed copies them on save).
    assert not list(full.rglob("zero_to_*.py"))
    assert config["model_name"] == "clip-tiny"
    for file in ("model.safetensors", "model.pt"):
        model, _, _ = open_clip.create_model_and_transforms("clip-tiny", pretrained=str(full / "export" / file))
        for name, tensor in model.state_dict().items():
            if name in weights:
                assert torch.equal(tensor, weights[name]), (file, name)


def test_one_process_zero3_resumes_exactly(demo_shards, tmp_path):
    """At world size 1, ZeRO-3 keeps every parameter resident (engine.py); checkpoints must still
    save and resume exactly."""
    from tests.pretrain.runner import run_module

    args = ["-m", "clip_pretrain.pretrain.train", "--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}",
            "zero.stage=3", "total_samples=48", "precision=bf16"]
    run_module([*args, f"run_dir={tmp_path / 'full'}"])
    assert_resume_from_step3_is_exact(tmp_path / "full", tmp_path / "resumed", lambda extra: run_module([*args, *extra]))


def test_resume_is_exact_with_patch_dropout_and_augmentation(demo_shards, tmp_path):
    """FLIP patch dropout draws its masks from each rank's torch RNG (seeded per rank, saved per
    rank in every checkpoint) and the augmentations from each sample's seed (stream position):
    a resumed run drops the same patches, crops and colours alike and continues the loss exactly."""
    import yaml

    augment = ["augment.scale=[0.4,1.0]", "augment.color_jitter=[0.4,0.4,0.4,0.1]", "augment.color_jitter_prob=0.8",
               "augment.gray_scale_prob=0.2"]
    args = ["--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}", "zero.stage=0",
            "model.patch_dropout=0.5", *augment]
    torchrun(2, [*args, f"run_dir={tmp_path / 'full'}"])
    assert_resume_from_step3_is_exact(tmp_path / "full", tmp_path / "resumed", lambda extra: torchrun(2, [*args, *extra]))
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())["augment"]
    assert saved == {"scale": [0.4, 1.0], "color_jitter": [0.4, 0.4, 0.4, 0.1], "color_jitter_prob": 0.8, "gray_scale_prob": 0.2}


def test_resume_is_exact_with_ema_and_temperature_options(demo_shards, tmp_path):
    """ZeRO-2: the EMA weights travel in the checkpoint's client state and the temperature's own
    lr group with the optimizer and schedule, so a resumed run continues the loss exactly and
    its EMA export (RUN/export) and raw export (RUN/export-raw) equal the uninterrupted run's."""
    from safetensors.torch import load_file

    args = ["--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}", "zero.stage=2", "ema.decay=0.9",
            "optim.logit_scale_lr=5e-3", "loss.init_logit_scale=20", "loss.min_logit_scale=5"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    torchrun(2, [*args, f"run_dir={full}"])
    assert_resume_from_step3_is_exact(full, resumed, lambda extra: torchrun(2, [*args, *extra]))
    for record in read_metrics(full):  # 10x the base lr through warmup and cosine
        assert record["logit_scale_lr"] == pytest.approx(10 * record["lr"], rel=1e-6), record
    assert read_metrics(full)[0]["temperature"] == pytest.approx(20, rel=0.05)
    exports = {name: [load_file(run / name / "model.safetensors") for run in (full, resumed)]
               for name in ("export", "export-raw")}
    for name, (uninterrupted, after_resume) in exports.items():
        for key, tensor in uninterrupted.items():
            assert torch.allclose(after_resume[key], tensor, rtol=0, atol=1e-6), (name, key)
    ema, raw = exports["export"][0], exports["export-raw"][0]
    assert not torch.equal(ema["text_projection"], raw["text_projection"])  # the export is the average


def test_resume_is_exact_with_cyclip_and_mlm(demo_shards, tmp_path):
    """CyCLIP's terms are pure functions of the gathered features (no state of their own) and the
    MLM masks are drawn from seeds derived from the stream position: a resumed 2-process run
    continues the loss, the CyCLIP and MLM parts and the masked-token accuracy included, exactly."""
    args = ["--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}", "zero.stage=0",
            "loss.cyclip_cross_weight=0.25", "loss.cyclip_inmodal_weight=0.25", "loss.mlm_weight=0.2"]
    torchrun(2, [*args, f"run_dir={tmp_path / 'full'}"])
    assert_resume_from_step3_is_exact(tmp_path / "full", tmp_path / "resumed", lambda extra: torchrun(2, [*args, *extra]))
    names = ("cyclip_cross", "cyclip_inmodal", "mlm", "mlm_accuracy")
    parts = {run: [(m["step"], name, m[name]) for m in read_metrics(tmp_path / run)
                   if m["step"] >= 4 and "loss" in m for name in names] for run in ("full", "resumed")}
    assert len(parts["full"]) == 12 and all(value > 0 for _, name, value in parts["full"] if name != "mlm_accuracy")
    for (step, name, value), (_, _, resumed) in zip(parts["full"], parts["resumed"], strict=True):
        assert resumed == pytest.approx(value, abs=1e-6), (step, name)


def test_resume_is_exact_with_accum_features(demo_shards, tmp_path):
    """The feature cache replays each micro-batch's patch-dropout masks from a saved RNG state: a
    resumed run draws the same masks in both passes and continues the loss exactly."""
    args = ["--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}", "zero.stage=0",
            "micro_batch=4", "grad_accum=2", "loss.accum_features=true", "model.patch_dropout=0.5"]
    torchrun(2, [*args, f"run_dir={tmp_path / 'full'}"])
    assert_resume_from_step3_is_exact(tmp_path / "full", tmp_path / "resumed", lambda extra: torchrun(2, [*args, *extra]))


def test_device_decode_trains_like_cpu_decode_and_resumes_exactly(demo_shards, tmp_path):
    """data.decode=gpu (run here with torchvision's CPU decoder in the trainer process): the
    losses follow CPU decode's (same crops, pixels within the resampling kernel's noise), and a
    resumed run continues them exactly."""
    from tests.pretrain.runner import run_module

    args = ["-m", "clip_pretrain.pretrain.train", "--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}",
            "zero.stage=0", "total_samples=48", "data.workers=2", "data.fast_decode=false"]
    run_module([*args, "data.decode=gpu", f"run_dir={tmp_path / 'full'}"])
    run_module([*args, "data.decode=cpu", f"run_dir={tmp_path / 'cpu'}"])
    device, cpu = losses(tmp_path / "full", 1), losses(tmp_path / "cpu", 1)
    assert sorted(device) == sorted(cpu) == [1, 2, 3, 4, 5, 6]
    for step in cpu:
        assert device[step] == pytest.approx(cpu[step], abs=2e-3), (step, device, cpu)
    assert_resume_from_step3_is_exact(tmp_path / "full", tmp_path / "resumed",
                                      lambda extra: run_module([*args, "data.decode=gpu", *extra]))
