"""Load any checkpoint kind the project produces into an `Encoder` over an open_clip model.

Accepted kinds:
  (a) a training run directory, or one of its `checkpoints/<tag>` DeepSpeed directories
      (read through `common.checkpoint_files`);
  (b) an exported weights file (`.pt`, `.pth`, `.bin`, `.safetensors`) with
      `open_clip_config.json` beside it, or a directory holding such a pair (RUN/export);
  (c) any weights file plus `model_name` naming a registered open_clip config.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2

from clip_pretrain.common import checkpoint_files
from clip_pretrain.eval.encoder import autocast_context, check_precision

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIRS = (REPO / "pretrain" / "model_configs", REPO / "eval" / "configs")
CONFIG_FILE = "open_clip_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
EXPORT_WEIGHT_NAMES = ("model.safetensors", "model.pt", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
ACCEPTED_KINDS = (
    "a run directory or its checkpoints/<tag> directory, "
    f"a weights file ({'/'.join(WEIGHT_SUFFIXES)}) with {CONFIG_FILE} beside it or --model NAME, "
    f"or a directory holding model.safetensors|model.pt and {CONFIG_FILE}"
)

_registered_dirs: set[Path] = set()


@dataclass
class LoadedModel:
    """An open_clip model wrapped as an `Encoder` (features are L2-normalised fp32)."""

    model: torch.nn.Module
    name: str
    checkpoint: str
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    precision: str = "fp32"
    model_config: dict = field(default_factory=dict)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> [B, D]."""
        with torch.no_grad(), autocast_context(self.device, self.precision):
            features = self.model.encode_image(images.to(self.device))
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> [B, D]."""
        with torch.no_grad(), autocast_context(self.device, self.precision):
            features = self.model.encode_text(tokens.to(self.device))
        return F.normalize(features.float(), dim=-1)


def register_project_configs() -> None:
    """Register pretrain/model_configs and eval/configs with open_clip (once per folder)."""
    for folder in CONFIG_DIRS:
        if folder.is_dir() and folder not in _registered_dirs:
            open_clip.add_model_config(folder)
            _registered_dirs.add(folder)


def split_config(raw: dict, source: str) -> tuple[dict, dict]:
    """Accept a bare open_clip model cfg or the hub layout {"model_cfg", "preprocess_cfg"}."""
    model_cfg = raw.get("model_cfg", raw)
    if not all(key in model_cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{source}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    return model_cfg, raw.get("preprocess_cfg") or {}


def register_config(model_cfg: dict, hint: str) -> str:
    """Register a config dict under a name derived from its content; returns the name."""
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{hint}-{digest}"
    if name not in open_clip.list_models():
        # add_model_config names a config after its file stem, so each config gets its own file.
        folder = Path(tempfile.mkdtemp(prefix="eval-model-config-"))
        path = folder / f"{name}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
    return name


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from .safetensors or a torch file (weights_only), unwrapping common containers."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: holds {type(state_dict).__name__}, not a state dict")
    # DDP / DeepSpeed wrappers prefix every key with "module.".
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def first_mismatch(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """Describe the first tensor where model and weights disagree, or None if they match."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            return f"missing key {key!r} (model expects shape {tuple(tensor.shape)})"
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            return (f"shape mismatch for {key!r}: weights {tuple(state_dict[key].shape)}, "
                    f"config expects {tuple(tensor.shape)}")
    for key in state_dict:
        if key not in expected:
            return f"unexpected key {key!r}"
    return None


def config_beside(weights: Path) -> Path | None:
    candidate = weights.parent / CONFIG_FILE
    return candidate if candidate.is_file() else None


def is_training_checkpoint(path: Path) -> bool:
    """A run dir (checkpoints/, config.yaml) or a DeepSpeed tag dir inside checkpoints/."""
    return path.is_dir() and (
        (path / "checkpoints").is_dir()
        or (path / "config.yaml").is_file()
        or (path / "latest").is_file()
        or (path / "COMPLETE").is_file()
        or path.parent.name == "checkpoints"
        or any(path.glob("*mp_rank_*"))
    )


def export_weights_in(path: Path) -> Path | None:
    if not (path / CONFIG_FILE).is_file():
        return None
    return next((path / name for name in EXPORT_WEIGHT_NAMES if (path / name).is_file()), None)


Resolved = tuple[dict[str, torch.Tensor], str, dict]  # state dict, open_clip config name, preprocess_cfg


def resolve_source(path: Path, model_name: str | None) -> Resolved:
    """Read weights and pick the open_clip config name for any accepted checkpoint kind."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}; expected {ACCEPTED_KINDS}")
    if path.is_dir() and export_weights_in(path) is not None:
        path = export_weights_in(path)
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(f"checkpoint {path}: unknown kind (suffix {path.suffix!r}); expected {ACCEPTED_KINDS}")
        preprocess_cfg: dict = {}
        if model_name is None:
            config_path = config_beside(path)
            if config_path is None:
                raise ValueError(f"checkpoint {path}: no {CONFIG_FILE} beside it; pass --model NAME "
                                 f"(an open_clip config name) or add the json")
            raw = json.loads(config_path.read_text())
            model_cfg, preprocess_cfg = split_config(raw, str(config_path))
            model_name = register_config(model_cfg, raw.get("model_name", path.stem))
        return read_state_dict(path), model_name, preprocess_cfg
    if is_training_checkpoint(path):
        return resolve_training_checkpoint(path, model_name)
    raise ValueError(f"checkpoint {path}: unknown kind; expected {ACCEPTED_KINDS}")


def resolve_training_checkpoint(path: Path, model_name: str | None) -> Resolved:
    try:
        state_dict = checkpoint_files.consolidated_state_dict(path)
        raw = checkpoint_files.read_model_config(path) if model_name is None else {}
    except checkpoint_files.CheckpointError as err:  # already one line with the fix
        raise ValueError(f"checkpoint {path}: {err}") from None
    preprocess_cfg: dict = {}
    if model_name is None:
        model_cfg, preprocess_cfg = split_config(raw, f"{path} model config")
        model_name = register_config(model_cfg, raw.get("model_name", path.name))
    return state_dict, model_name, preprocess_cfg


def load_checkpoint(
    checkpoint: str,
    *,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> LoadedModel:
    """Build the open_clip model for `checkpoint` and load its weights strictly."""
    check_precision(precision)
    register_project_configs()
    if model_name is not None and model_name not in open_clip.list_models():
        raise ValueError(f"--model {model_name!r}: not a registered open_clip config; "
                         f"add its json to pretrain/model_configs or drop --model")
    path = Path(checkpoint)
    state_dict, name, preprocess_cfg = resolve_source(path, model_name)
    device = torch.device(device)
    # pretrained_text=False: never fetch HF text-tower weights; everything comes from the checkpoint.
    model = open_clip.create_model(name, pretrained=None, load_weights=False, device="cpu", pretrained_text=False,
                                   force_preprocess_cfg=preprocess_cfg)
    mismatch = first_mismatch(model, state_dict)
    if mismatch is not None:
        raise ValueError(f"checkpoint {checkpoint} does not match config {name!r}: {mismatch}")
    model.load_state_dict(state_dict, strict=True)
    model.to(device).eval()
    return LoadedModel(
        model=model,
        name=name,
        checkpoint=str(checkpoint),
        preprocess=image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False),
        tokenizer=open_clip.get_tokenizer(name),
        device=device,
        precision=precision,
        model_config=open_clip.get_model_config(name) or {},
    )
