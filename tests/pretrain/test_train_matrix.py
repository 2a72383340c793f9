"""The option matrix, trained end to end: 2 processes (gloo), every precision x ZeRO stage 0/2/3,
MLM, gradient accumulation (also with the feature cache), SigLIP, local loss, CyCLIP, EMA, the
temperature options and resampled mode. Each run must give finite losses that go down and an
export that open_clip loads and runs."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from clip_pretrain.common.checkpoint_files import read_model_config
from tests.pretrain.runner import REPO, read_metrics, torchrun

pytestmark = pytest.mark.slow

# 16 optimizer steps of a global batch of 32 (2 processes x 8 x accumulation 2).
COMMON = ["--config", "pretrain/configs/smoke.yaml", "grad_accum=2", "total_samples=512", "optim.lr=2e-3",
          "checkpoint.every_steps=0", "logging.every_steps=1"]
MLM = "loss.mlm_weight=0.5"
RUNS = {
    "fp32-zero0-mlm": ["precision=fp32", "zero.stage=0", MLM],
    "fp32-zero2-mlm": ["precision=fp32", "zero.stage=2", MLM],
    "fp32-zero3-mlm": ["precision=fp32", "zero.stage=3", MLM],
    "bf16-zero0-mlm": ["precision=bf16", "zero.stage=0", MLM],
    "bf16-zero2-mlm": ["precision=bf16", "zero.stage=2", MLM],
    "bf16-zero3-mlm": ["precision=bf16", "zero.stage=3", MLM],
    "bf16-zero2-siglip-resampled": ["precision=bf16", "zero.stage=2", "loss.kind=siglip", "data.mode=resampled"],
    "fp32-zero0-localloss-resampled": ["precision=fp32", "zero.stage=0", "loss.local_loss=true", "data.mode=resampled"],
    "fp16-zero0-mlm": ["precision=fp16", "zero.stage=0", MLM],
    "fp16-zero2-noclip": ["precision=fp16", "zero.stage=2", "optim.grad_clip=0"],
    "bf16-zero2-siglip-ema-temperature": ["precision=bf16", "zero.stage=2", "loss.kind=siglip", "ema.decay=0.9",
                                          "loss.init_logit_scale=10", "loss.init_logit_bias=-5",
                                          "optim.logit_scale_lr=1e-3"],
    "fp32-zero2-cyclip": ["precision=fp32", "zero.stage=2", "loss.cyclip_cross_weight=0.25", "loss.cyclip_inmodal_weight=0.25"],
    "bf16-zero2-accumfeat": ["precision=bf16", "zero.stage=2", "loss.accum_features=true"],
}


def cpu_runs_fp16() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
        return out.dtype == torch.float16
    except RuntimeError:
        return False


@pytest.mark.parametrize("name", list(RUNS))
def test_option_trains_end_to_end(name, demo_shards, tmp_path):
    if name.startswith("fp16") and not cpu_runs_fp16():
        pytest.skip("this CPU build of torch has no float16 autocast")
    run_dir = tmp_path / name
    torchrun(2, [*COMMON, *RUNS[name], f"data.train={demo_shards}", f"run_dir={run_dir}"])

    metrics = read_metrics(run_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, f"loss did not go down: {losses}"
    assert metrics[-1]["nonfinite_steps"] == 0
    if MLM in RUNS[name]:
        assert metrics[-1]["mlm"] > 0
    if "optim.logit_scale_lr=1e-3" in RUNS[name]:  # its own group, 1e-3 / 2e-3 of the base lr all along
        assert all(m["logit_scale_lr"] == pytest.approx(m["lr"] / 2, rel=1e-6) for m in metrics), metrics
    if "ema.decay=0.9" in RUNS[name]:  # export: the EMA weights; export-raw: the trained ones
        assert (run_dir / "export-raw" / "model.safetensors").is_file()
    if "cyclip" in name:  # both terms logged, and the total includes them
        assert all(m["cyclip_cross"] >= 0 and m["cyclip_inmodal"] > 0 for m in metrics if "loss" in m)
        assert metrics[-1]["loss"] > metrics[-1]["contrastive"]

    config = read_model_config(run_dir / "export")
    open_clip.add_model_config(str(REPO / "pretrain" / "model_configs"))
    # A SigLIP export's config carries init_logit_bias; open_clip builds logit_bias only when told.
    model, _, preprocess = open_clip.create_model_and_transforms(
        config["model_name"], pretrained=str(run_dir / "export" / "model.safetensors"),
        init_logit_bias=config["model_cfg"].get("init_logit_bias"))
    tokens = open_clip.get_tokenizer(config["model_name"])(["a red circle", "a blue square"])
    with torch.no_grad():
        features = model.encode_text(tokens)
    assert torch.isfinite(features).all()
    if "siglip" in name:
        assert model.logit_bias is not None  # the learned bias travels with the export


def test_eval_cadence_is_independent_of_the_logging_interval(demo_shards, tmp_path):
    """Evaluation every 3 steps while metrics are read every 4: evaluations at 3, 6 and the end."""
    from tests.pretrain.runner import run_module

    suite = tmp_path / "suite.yaml"
    suite.write_text((REPO / "eval" / "suites" / "demo.yaml").read_text().replace("demo_out/shards", str(demo_shards)))
    run_dir = tmp_path / "run"
    run_module(["-m", "clip_pretrain.pretrain.train", "--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}",
                f"run_dir={run_dir}", "total_samples=64", "logging.every_steps=4", "checkpoint.every_steps=0",
                f"eval.suite={suite}", "eval.every_steps=3", "zero.stage=0"])
    evaluated = [m["step"] for m in read_metrics(run_dir) if any(key.startswith("eval/") for key in m)]
    assert evaluated == [3, 6, 8], evaluated
    logged = sorted({m["step"] for m in read_metrics(run_dir) if "loss" in m})  # the final record repeats with eval
    assert logged == [4, 8], logged
