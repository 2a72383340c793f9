"""Model: an open_clip CLIP wrapped in DualEncoder, plus the optional DeCLIP-style MLM head.

Attention: open_clip 3.3's default blocks use nn.MultiheadAttention with need_weights=False,
which PyTorch routes to F.scaled_dot_product_attention (fused/flash kernels on GPU); its custom
blocks (qk_norm, scaled heads...) call F.scaled_dot_product_attention directly. Nothing to patch;
tests/model/test_model_build.py checks that SDPA is hit.

Usage: `python -m clip_pretrain.pretrain.model --list` prints the shipped configs with parameter counts.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn as nn
from open_clip.factory import merge_preprocess_dict
from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg

from clip_pretrain.common.cli import prog_name
from clip_pretrain.common.checkpoint_files import to_open_clip_state_dict
from clip_pretrain.pretrain.losses import LossConfig, log_temperature_init
from clip_pretrain.pretrain.mlm import TextMLM, _register_external

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)  # makes "clip-tiny" etc. valid open_clip model names
SHIPPED_CONFIGS = sorted(path.stem for path in CONFIG_DIR.glob("*.json"))
OPEN_CLIP_EXAMPLES = ("RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


@dataclass
class ModelConfig:
    """Which open_clip architecture, where its initial weights come from, what is frozen."""

    name: str = "clip-tiny"
    pretrained: str | None = None  # local checkpoint file, or an open_clip tag already in the cache
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_groups: int = 0
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each tower (nn.Module.compile: state-dict keys unchanged)
    patch_dropout: float = 0.0  # FLIP: share of image patches dropped in training (ViT towers); 0 = off

    def __post_init__(self) -> None:
        if open_clip.get_model_config(self.name) is None:
            known = ", ".join([*SHIPPED_CONFIGS, *OPEN_CLIP_EXAMPLES])
            raise ValueError(f"name: unknown model {self.name!r}; use e.g. {known} (open_clip.list_models() has all)")
        if "multimodal_cfg" in open_clip.get_model_config(self.name):
            raise ValueError(f"name: {self.name!r} is a CoCa model (captioning decoder); pick a CLIP/SigLIP architecture")
        for field in ("lock_image", "lock_text", "grad_checkpointing", "compile"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field}: must be true or false, got {getattr(self, field)!r}")
        for field in ("lock_image_unlocked_groups", "lock_text_unlocked_groups"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{field}: must be an integer >= 0, got {value!r}")
        if not (isinstance(self.patch_dropout, (int, float)) and not isinstance(self.patch_dropout, bool)
                and 0 <= self.patch_dropout < 1):
            raise ValueError(f"patch_dropout: must be a number in [0, 1) (FLIP uses 0.5), got {self.patch_dropout!r}")
        if self.patch_dropout and "timm_model_name" in open_clip.get_model_config(self.name).get("vision_cfg", {}):
            raise ValueError(f"patch_dropout: {self.name} has a timm image tower, which open_clip cannot drop patches of; set 0")
        if self.pretrained == "":
            self.pretrained = None
        if self.pretrained is not None:
            resolve_pretrained(self.name, self.pretrained)


def resolve_pretrained(name: str, pretrained: str) -> tuple[str, dict]:
    """(local file path, open_clip pretrained cfg or {}) for a file path or a cached tag.

    Never downloads: a tag is accepted only when its weights are already in the local cache.
    """
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), {}
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
            raise ValueError(f"pretrained: checkpoint file {pretrained} not found; give an existing open_clip checkpoint path")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)[:5]) or "none"
        raise ValueError(f"pretrained: {pretrained!r} is neither a file nor a tag of {name} (tags: {tags}); give a local checkpoint path")
    cached, expected = _cached_tag_file(tag_cfg)
    if cached is None:
        raise ValueError(f"pretrained: weights for {name}/{pretrained} are not in the local cache (expected {expected}); "
                         f"copy that file there or set pretrained to a local checkpoint path")
    return cached, tag_cfg


def _cached_tag_file(tag_cfg: dict) -> tuple[str | None, str]:
    """(path if cached else None, human description of where it would be). Looks, never fetches."""
    if tag_cfg.get("file"):
        return (tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None), tag_cfg["file"]
    expected = []
    if tag_cfg.get("hf_hub"):
        # Same split as open_clip.pretrained.download_pretrained ("org/repo/" -> default file name).
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        names = [filename[: -len(Path(filename).suffix)] + ".safetensors", filename] if filename.endswith((".bin", ".pth")) else [filename]
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        for candidate in names:
            found = try_to_load_from_cache(repo_id, candidate) if try_to_load_from_cache else None
            if isinstance(found, str) and os.path.isfile(found):
                return found, ""
        expected.append(f"HF cache {repo_id}/{filename}")
    if tag_cfg.get("url"):
        target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(tag_cfg["url"]))
        if os.path.isfile(target):
            return target, ""
        expected.append(target)
    return None, " or ".join(expected)


class DualEncoder(nn.Module):
    """open_clip CLIP (`.clip`) + optional MLM (`.mlm`); one forward for train, eval and MLM."""

    def __init__(self, clip: nn.Module, model_name: str, mlm: bool, init_cfg: dict | None = None):
        super().__init__()
        self.clip = clip
        self.model_name = model_name
        self.init_cfg = dict(init_cfg or {})  # init_logit_scale/bias the model was built with (model_config)
        self.mlm = TextMLM(clip) if mlm else None
        # forward reads logit_scale/bias directly (they are CLIP's own parameters): under ZeRO-3
        # they must be gathered for the whole DualEncoder.forward, not only inside clip.forward.
        _register_external(self, clip.logit_scale)
        if clip.logit_bias is not None:
            _register_external(self, clip.logit_bias)

    def forward(
        self,
        images: torch.Tensor | None = None,
        texts: torch.Tensor | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """images [B, 3, H, W], texts [B, L], mlm_input_ids [B, L] -> dict:
        image_features / text_features [B, D] (L2-normalised) or None, logit_scale [1] (raw log),
        logit_bias [1] or None, mlm_logits [B, L, V] when mlm_input_ids is given, or only at the
        M masked positions ([M, V], with "mlm_targets" [M]) when mlm_labels [B, L] is given too.
        mlm_positions: int64 [M] flat indices of those positions (the loader sends them; without
        them they are found from mlm_labels, which reads the device once)."""
        # Always through the open_clip module's own forward: ZeRO-3 gathers weights in its hooks.
        out = self.clip(images, texts)
        # clone(): returning a Parameter itself from the root forward confuses ZeRO-3's hooks.
        logit_bias = self.clip.logit_bias.clone() if self.clip.logit_bias is not None else None
        result = {
            "image_features": out["image_features"],
            "text_features": out["text_features"],
            "logit_scale": self.clip.logit_scale.clone(),
            "logit_bias": logit_bias,
        }
        if mlm_input_ids is not None:
            if self.mlm is None:
                raise ValueError("mlm_input_ids: this model has no MLM head; build it with loss.mlm_weight > 0")
            if mlm_labels is None:
                result["mlm_logits"] = self.mlm(self.clip, mlm_input_ids)
            else:
                if mlm_positions is None:
                    mlm_positions = (mlm_labels.flatten() != -100).nonzero().flatten()
                result["mlm_logits"] = self.mlm(self.clip, mlm_input_ids, mlm_positions)
                result["mlm_targets"] = mlm_labels.flatten().index_select(0, mlm_positions)
        return result

    @property
    def model_config(self) -> dict:
        """The open_clip model cfg dict (what open_clip_config.json["model_cfg"] holds).

        A SigLIP-trained model gets the `init_logit_bias` it was built with: without one open_clip
        builds no logit_bias parameter and the exported state dict would not load. A loss.init_logit_scale
        lands as open_clip's `init_logit_scale` (its log, open_clip's convention).
        """
        return open_clip.get_model_config(self.model_name) | self.init_cfg

    def open_clip_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict loadable by open_clip.create_model(name, pretrained=file)."""
        return to_open_clip_state_dict(self.state_dict())




def build_model(model_cfg: ModelConfig, loss_cfg: LossConfig) -> DualEncoder:
    """Create the open_clip model (random init or local weights), apply locks / checkpointing,
    and add the MLM head when loss_cfg.mlm_weight > 0."""
    init_scale, init_bias = log_temperature_init(loss_cfg)
    kwargs = dict(
        nonscalar_logit_scale=True,
        init_logit_scale=init_scale,
        init_logit_bias=init_bias,
        output_dict=True,
        pretrained_image=False,  # never fetch timm / HF tower weights
        pretrained_text=False,
    )
    if model_cfg.patch_dropout:
        # Active in train() only (open_clip's PatchDropout): evaluation and exports see every patch.
        kwargs["force_patch_dropout"] = float(model_cfg.patch_dropout)
    tag_cfg: dict = {}
    if model_cfg.pretrained is not None:
        path, tag_cfg = resolve_pretrained(model_cfg.name, model_cfg.pretrained)
        kwargs["pretrained"] = path
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    clip = open_clip.create_model(model_cfg.name, **kwargs)
    if tag_cfg:
        # A tag's normalisation (mean/std, resize mode) travels with the model's preprocess cfg.
        set_model_preprocess_cfg(clip, merge_preprocess_dict(clip.visual.preprocess_cfg, tag_cfg))
    if model_cfg.lock_image:
        clip.lock_image_tower(unlocked_groups=model_cfg.lock_image_unlocked_groups)
    if model_cfg.lock_text:
        clip.lock_text_tower(unlocked_layers=model_cfg.lock_text_unlocked_groups)
    if model_cfg.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    if model_cfg.compile:
        for tower in towers(clip):
            tower.compile()  # in place: parameter names, checkpoints and exports stay as they are
    init_cfg = {"init_logit_scale": init_scale} if loss_cfg.init_logit_scale is not None else {}
    if init_bias is not None:
        init_cfg["init_logit_bias"] = init_bias
    return DualEncoder(clip, model_cfg.name, mlm=loss_cfg.mlm_enabled, init_cfg=init_cfg)


def towers(clip: nn.Module) -> list[nn.Module]:
    """The image tower and the text transformer stack (what torch.compile gets under model.compile).

    Compiling each tower rather than the whole DualEncoder keeps the all-gather and the loss out
    of the graph, and the MLM pass reuses the compiled text transformer."""
    text = getattr(clip, "text", None) or clip.transformer
    return [clip.visual, text]


def parameter_counts(name: str) -> dict[str, int]:
    """{"image", "text", "total"} parameter counts, built on the meta device (no memory, fast)."""
    cfg = open_clip.get_model_config(name)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    with torch.device("meta"):
        model = (CustomTextCLIP if custom else CLIP)(**cfg)
    total = sum(p.numel() for p in model.parameters())
    image = sum(p.numel() for p in model.visual.parameters())
    logit = sum(p.numel() for n, p in model.named_parameters(recurse=False) if n.startswith("logit_"))
    return {"image": image, "text": total - image - logit, "total": total}


def _print_table(names: list[str]) -> None:
    print(f"{'model':<16}{'image':>12}{'text':>12}{'total':>12}")
    for name in names:
        try:
            counts = parameter_counts(name)
        except Exception as error:  # a timm/HF tower whose library is missing: report, keep going
            print(f"{name:<16}  n/a ({type(error).__name__}: {error})".splitlines()[0])
            continue
        print(f"{name:<16}{counts['image'] / 1e6:>11.2f}M{counts['text'] / 1e6:>11.2f}M{counts['total'] / 1e6:>11.2f}M")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.pretrain.model"), description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print shipped configs (and a few open_clip ones) with parameter counts")
    parser.add_argument("--name", action="append", default=[], help="also count this open_clip model (repeatable)")
    args = parser.parse_args(argv)
    if not args.list and not args.name:
        parser.print_help()
        return 0
    for name in args.name:
        if open_clip.get_model_config(name) is None:
            print(f"error: --name {name!r} is not an open_clip model; see open_clip.list_models()", file=sys.stderr)
            return 2
    logging.getLogger().setLevel(logging.ERROR)
    _print_table([*SHIPPED_CONFIGS, *OPEN_CLIP_EXAMPLES, *args.name] if args.list else args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
