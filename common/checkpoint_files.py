"""Checkpoint files: the one owner of their format, shared by pretrain/ (which writes them) and eval/
(which reads them), so neither imports the other.

Layout of a run directory::

    RUN/config.yaml                      resolved TrainConfig
    RUN/metrics.jsonl                    one JSON object per logged step, plus resume markers (README: fields)
    RUN/checkpoints/step_00000100/       a DeepSpeed checkpoint (any ZeRO stage) + open_clip_config.json
                                         + train_config.yaml + COMPLETE (written last)
    RUN/checkpoints/latest               tag of the newest COMPLETE checkpoint (atomic rename)
    RUN/export/model.pt|model.safetensors|open_clip_config.json   consolidated fp32 open_clip weights
                                         (the EMA weights when ema.decay > 0)
    RUN/export-raw/...                   with ema.decay > 0 only: the trained (raw) weights, same files

Here: names and markers, safe (weights_only) loading, finding and validating checkpoints and model
configs, the DualEncoder -> open_clip state-dict mapping, consolidation of any ZeRO stage and export.
Writing checkpoints during training (pretrain.checkpoint.Checkpointer) builds on these.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

LATEST = "latest"
COMPLETE = "COMPLETE"
MODEL_CONFIG = "open_clip_config.json"
TRAIN_CONFIG = "train_config.yaml"
EMA_STATE = "ema"  # client-state key of pretrain.ema.WeightEma.state_dict(): {"updates", "shadow"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved, found or loaded; the message is one line with the fix."""


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


# --- safe loading ---------------------------------------------------------------------------------


def _safe_globals() -> list[Any]:
    """Non-tensor types DeepSpeed stores in its checkpoint files, allowed for weights_only loading
    (plain records: enums, loss-scaler settings, fragment addresses; none runs code on load)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler, set, frozenset]


@contextlib.contextmanager
def safe_torch_load() -> Iterator[None]:
    """Forces `torch.load(weights_only=True)` inside DeepSpeed's loaders, which ask for pickle.

    Checkpoints may come from strangers: unpickling arbitrary objects runs arbitrary code. Only
    tensors, containers and the few DeepSpeed enums listed in `_safe_globals` are accepted.
    """
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    finally:
        torch.load = original


def load_error(checkpoint: Path, error: Exception,
                fix: str = "resume from an earlier step_* dir or start a new run_dir") -> CheckpointError:
    """One line for why a checkpoint could not be loaded: foreign code, another model, or corruption."""
    text = str(error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if "GLOBAL" in text or "Unsupported global" in text:  # torch's words for a non-allowlisted class/function
        culprit = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), first)
        return CheckpointError(
            f"refusing to load {checkpoint}: it holds pickled objects that could run code ({culprit[:160]}); "
            "only checkpoints written by this project (tensors and plain data) are accepted"
        )
    if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        detail = next((line.strip() for line in text.splitlines() if "mismatch" in line or "key" in line), first)
        return CheckpointError(
            f"checkpoint {checkpoint} was written by a different model ({detail[:200]}); "
            "resume with the same model config or start a new run_dir"
        )
    return CheckpointError(
        f"cannot read checkpoint {checkpoint}: {first[:200]}; the files are corrupt or incomplete: {fix}"
    )


def check_weights_file(path: str | Path | None) -> None:
    """Refuses, in one line, a weights file that is not a plain state dict of tensors: a corrupt or
    truncated file, a safetensors header that does not parse, pickled objects or tensor subclasses
    (weights_only refuses their classes). Reads only headers and the pickle (tensors are mmapped)."""
    if path is None:
        return
    path = Path(path)
    fix = "give an open_clip checkpoint (a .pt state dict or .safetensors) or model.pretrained=null"
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
            return
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as archive:
                archive.files
            return
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # noqa: BLE001 - any parse/unpickling failure becomes one line
        raise load_error(path, error, fix) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not all(torch.is_tensor(value) for value in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__} with non-tensor entries, not a state dict "
                              f"of tensors; {fix}")


# --- locating checkpoints -------------------------------------------------------------------------


_TAG = re.compile(r"^step_\d{8}$")
SUPERSEDED = "superseded"


def _read_latest(latest_file: Path) -> str:
    with latest_file.open("rb") as handle:  # a tag is 13 bytes; never read a huge planted file whole
        return handle.read(256).decode("utf-8", errors="replace").strip()


def latest_tag(checkpoints_dir: Path) -> str | None:
    """Tag named by `latest` if it is a step_* dir of `checkpoints_dir` and complete, else None
    (a `latest` naming a path elsewhere never resolves outside the run directory)."""
    latest_file = checkpoints_dir / LATEST
    if not latest_file.is_file():
        return None
    tag = _read_latest(latest_file)
    return tag if _TAG.match(tag) and (checkpoints_dir / tag / COMPLETE).is_file() else None


def complete_tags(checkpoints_dir: Path) -> list[str]:
    """Tags of the complete step_* checkpoints, oldest first."""
    return sorted(p.name for p in checkpoints_dir.glob("step_*") if _TAG.match(p.name) and (p / COMPLETE).is_file())


def resume_tag(checkpoints_dir: Path) -> str | None:
    """The checkpoint `--resume auto` continues from: `latest`, checked strictly.

    None only when there is nothing to resume. A `latest` that names no complete step_* dir
    (edited, or pointing elsewhere) is refused: starting from scratch beside it would silently
    drop the run's progress. With complete checkpoints but no `latest` (a kill between COMPLETE and
    the rename of `latest`), the newest complete one is used.
    """
    latest_file = checkpoints_dir / LATEST
    complete = complete_tags(checkpoints_dir)
    if not latest_file.is_file():
        return complete[-1] if complete else None
    tag = _read_latest(latest_file)
    if latest_tag(checkpoints_dir) == tag:
        return tag
    what = "is not a step_NNNNNNNN tag in this directory" if not _TAG.match(tag) else "has no complete checkpoint dir"
    fix = (f"pass checkpoint.resume={checkpoints_dir / complete[-1]} (the newest complete one)" if complete
           else "remove it to start from scratch")
    raise CheckpointError(f"{latest_file} names {tag[:80]!r}, which {what}; {fix}")


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A run dir, its checkpoints/ dir or one checkpoint dir -> the complete checkpoint dir to use."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path not found: {path}")
    if (path / COMPLETE).is_file():
        return path
    for candidate in (path / "checkpoints", path):
        if (candidate / LATEST).is_file():
            tag = resume_tag(candidate)
            return candidate / tag
    if path.is_dir() and any(path.glob("*model_states.pt")):
        raise CheckpointError(f"{path} has no {COMPLETE} marker: it was interrupted while saving")
    raise CheckpointError(f"{path} is not a run directory or a checkpoint written by pretrain.train")


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The open_clip config JSON ({"model_name", "model_cfg", "preprocess_cfg"}) saved with a
    checkpoint or an export; `path` may be a run dir, checkpoint dir, export dir or weights file."""
    path = Path(path)
    candidates = [path.parent / MODEL_CONFIG] if path.is_file() else [path / MODEL_CONFIG, path / "export" / MODEL_CONFIG]
    if not path.is_file():
        with contextlib.suppress(CheckpointError):
            candidates.append(resolve_checkpoint_dir(path) / MODEL_CONFIG)
    for candidate in candidates:
        if candidate.is_file():
            try:
                config = json.loads(candidate.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise CheckpointError(f"{candidate} is not valid JSON ({error}); restore it from the run's "
                                      "checkpoint or pass the model name with --model") from None
            if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
                raise CheckpointError(f"{candidate} has no model_cfg mapping; restore it or pass the model name with --model")
            check_model_config(config["model_cfg"], str(candidate))
            return config
    raise CheckpointError(f"no {MODEL_CONFIG} found for {path}; pass the model name with --model")


MAX_PARAMETERS = 2e10  # ten times ViT-bigG: beyond this a config is a typo or an attack, not a model


def _numbers(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def estimated_parameters(model_cfg: dict[str, Any]) -> float:
    """A rough count (transformer blocks, embeddings, position tables) for refusing absurd sizes."""
    def size(tower: Any, name: str) -> float:
        value = tower.get(name, 0) if isinstance(tower, dict) else 0
        return float(sum(value) if isinstance(value, list) else value or 0)

    total = 2 * size(model_cfg, "embed_dim") ** 2
    for tower in (model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")):
        width = size(tower, "width")
        total += 12 * width**2 * size(tower, "layers")
        total += width * (size(tower, "vocab_size") + size(tower, "context_length"))
        patch = max(size(tower, "patch_size"), 1.0)
        total += width * (size(tower, "image_size") / patch) ** 2
    return total


def check_model_config(model_cfg: dict[str, Any], source: str) -> None:
    """Refuses (one line) a model config with a non-finite number, or whose sizes add up to an
    absurd model: building it would exhaust memory or hang instead of failing."""
    for number in _numbers(model_cfg):
        if not math.isfinite(number):
            raise CheckpointError(f"{source}: model config holds {number}, not a finite number; fix the config")
    estimate = estimated_parameters(model_cfg)
    if estimate > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: model config describes ~{estimate:.1e} parameters (limit {MAX_PARAMETERS:.0e}); "
                              "its widths, layers or image size are absurd: fix the config")


# --- consolidation and export ---------------------------------------------------------------------


def consolidated_state_dict(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """fp32 open_clip state dict from a checkpoint of any ZeRO stage (partitions merged), loaded
    without unpickling code. ema=True: the EMA weights saved with it in place of the trained ones
    (frozen weights and buffers, which the EMA does not average, stay the trained module's)."""
    checkpoint_dir = resolve_checkpoint_dir(path)
    full = _full_state_dict(checkpoint_dir)
    if ema:
        full = {**full, **ema_weights(checkpoint_dir)}
    return {name: tensor.to(torch.float32).contiguous() for name, tensor in to_open_clip_state_dict(full).items()}


def _full_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils import zero_to_fp32

    try:
        with safe_torch_load():
            if any(checkpoint_dir.glob("*optim_states.pt")):
                return zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
                    str(checkpoint_dir.parent), tag=checkpoint_dir.name
                )
            # ZeRO stage 0 keeps the whole module in the model-states file.
            states = torch.load(checkpoint_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
            return states["module"]
    except Exception as error:  # noqa: BLE001 - any unpickling/format failure becomes one line
        raise load_error(checkpoint_dir, error) from None


def ema_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The EMA weights saved in a checkpoint's client state, DualEncoder names -> fp32 tensors."""
    try:
        with safe_torch_load():  # mmap: reads the EMA tensors only
            saved = torch.load(checkpoint_dir / "mp_rank_00_model_states.pt", map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling/format failure becomes one line
        raise load_error(checkpoint_dir, error) from None
    if not isinstance(saved.get(EMA_STATE), dict) or "shadow" not in saved[EMA_STATE]:
        raise CheckpointError(f"checkpoint {checkpoint_dir} holds no EMA weights (trained with ema.decay=0); "
                              "export its trained weights instead")
    return saved[EMA_STATE]["shadow"]


def export(checkpoint_dir: Path, out_dir: Path, ema: bool = False) -> Path:
    """Writes model.pt, model.safetensors and open_clip_config.json (loadable by open_clip); with
    ema=True the weights are the checkpoint's EMA weights."""
    from safetensors.torch import save_file

    state_dict = consolidated_state_dict(checkpoint_dir, ema=ema)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "model.pt", lambda tmp: torch.save(state_dict, tmp))
    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(state_dict, str(tmp)))
    shutil.copyfile(checkpoint_dir / MODEL_CONFIG, out_dir / MODEL_CONFIG)
    return out_dir


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename over `path`: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def to_open_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DualEncoder state dict -> open_clip's: drop the "clip." prefix and every MLM tensor, and
    give logit_scale/logit_bias back open_clip's 0-dim shape (we train them as [1] because
    DeepSpeed's broadcast views parameters as bytes, which fails on 0-dim tensors)."""
    result = {}
    for key, value in state_dict.items():
        if not key.startswith("clip."):
            continue
        name = key[len("clip."):]
        value = value.detach().clone()
        result[name] = value.reshape(()) if name in ("logit_scale", "logit_bias") else value
    return result
