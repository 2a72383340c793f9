"""Fixtures for eval tests: a random-init tiny open_clip model saved as every checkpoint kind."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clip_pretrain.eval.checkpoints import register_project_configs

TINY = "eval-tiny-vit"  # eval/configs/eval-tiny-vit.json: ViT width 64, 2 layers, 32 px


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    register_project_configs()
    torch.manual_seed(0)
    return open_clip.create_model(TINY, pretrained_text=False).eval()


@pytest.fixture(scope="session")
def checkpoints(tiny_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str | None]]:
    """Checkpoint kind -> (checkpoint argument, --model argument)."""
    root = tmp_path_factory.mktemp("checkpoints")
    state_dict = tiny_model.state_dict()
    model_cfg = open_clip.get_model_config(TINY)

    export = root / "export"
    export.mkdir()
    torch.save(state_dict, export / "model.pt")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(export / "model.safetensors"))
    # The layout pretrain.checkpoint writes: {"model_name", "model_cfg", "preprocess_cfg"}.
    (export / "open_clip_config.json").write_text(json.dumps({"model_name": "tiny", "model_cfg": model_cfg,
                                                              "preprocess_cfg": {}}))
    bare = root / "bare"
    bare.mkdir()
    torch.save(state_dict, bare / "weights.pt")
    flat = root / "flat"  # bare open_clip model cfg beside a safetensors file
    flat.mkdir()
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(flat / "weights.safetensors"))
    (flat / "open_clip_config.json").write_text(json.dumps(model_cfg))
    return {
        "pt_with_config": (str(export / "model.pt"), None),
        "safetensors_with_config": (str(export / "model.safetensors"), None),
        "export_dir": (str(export), None),
        "flat_config_safetensors": (str(flat / "weights.safetensors"), None),
        "model_name_and_file": (str(bare / "weights.pt"), TINY),
    }


@pytest.fixture(scope="session")
def run_dir(tiny_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory in pretrain.checkpoint's layout holding a ZeRO stage-0 checkpoint."""
    run = tmp_path_factory.mktemp("run")
    tag = run / "checkpoints" / "step_00000001"
    tag.mkdir(parents=True)
    # Training-side names: the open_clip model lives under `clip.`, logit_scale is trained as [1].
    module = {f"clip.{k}": (v.reshape(1) if k == "logit_scale" else v) for k, v in tiny_model.state_dict().items()}
    torch.save({"module": module}, tag / "mp_rank_00_model_states.pt")
    (tag / "open_clip_config.json").write_text(json.dumps({"model_name": "tiny", "preprocess_cfg": {},
                                                           "model_cfg": open_clip.get_model_config(TINY)}))
    (tag / "COMPLETE").write_text("")
    (run / "checkpoints" / "latest").write_text("step_00000001")
    (run / "config.yaml").write_text("{}\n")
    return run


@pytest.fixture
def image_file(tmp_path: Path):
    """Factory: write a small solid-colour JPEG and return its path."""
    def make(name: str, colour: tuple[int, int, int] = (120, 30, 200)) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 36), colour).save(path)
        return path
    return make


@pytest.fixture(scope="session")
def all_kinds(checkpoints: dict, run_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Every checkpoint kind, run directories included."""
    kinds = dict(checkpoints)
    kinds["run_dir"] = (str(run_dir), None)
    kinds["run_tag_dir"] = (str(run_dir / "checkpoints" / "step_00000001"), None)
    return kinds
