"""model.compile: the towers run under torch.compile (inductor, CPU here), train to the same losses as
eager mode, and the checkpoint / export keep open_clip's parameter names."""

from __future__ import annotations

import open_clip
import pytest
import torch

from tests.pretrain.runner import REPO, read_metrics, run_module

pytestmark = pytest.mark.slow


def test_compiled_towers_match_eager(demo_shards, tmp_path):
    args = ["-m", "clip_pretrain.pretrain.train", "--config", "pretrain/configs/smoke.yaml", f"data.train={demo_shards}",
            "total_samples=32", "checkpoint.every_steps=0", "zero.stage=2"]
    losses = {}
    for compiled in (False, True):
        run_dir = tmp_path / f"compile-{compiled}"
        run_module([*args, f"run_dir={run_dir}", f"model.compile={str(compiled).lower()}"], timeout=900)
        losses[compiled] = [m["loss"] for m in read_metrics(run_dir)]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4), losses

    open_clip.add_model_config(str(REPO / "pretrain" / "model_configs"))
    model = open_clip.create_model("clip-tiny", pretrained=str(tmp_path / "compile-True" / "export" / "model.safetensors"))
    assert not any("_orig_mod" in name for name in model.state_dict())
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
