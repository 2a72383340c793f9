"""Train-time image augmentation: the `augment` config section, handed to open_clip's own transform.

The keys are open_clip's `AugmentationCfg` (open_clip_train's `--aug-cfg`), so a recipe moves between
the two trainers unchanged: `augment.scale=[0.5,1.0]` here is `--aug-cfg scale='(0.5,1.0)'` there.
open_clip builds the transform (RandomResizedCrop, then SimCLR-style colour jitter and grayscale);
this module only validates the values and says which of them the device decoder can reproduce.

No horizontal flip, on purpose (open_clip has none either): captions say "on the left".
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class AugmentConfig:
    """`scale`: area share range of the random crop (open_clip's default [0.9, 1.0]); `color_jitter`:
    [brightness, contrast, saturation, hue] applied with probability `color_jitter_prob`;
    `gray_scale_prob`: chance of a grayscale image. 0 / null switches an augmentation off."""

    scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # open_clip's default
    color_jitter: list[float] | None = None
    color_jitter_prob: float = 0.0
    gray_scale_prob: float = 0.0

    def __post_init__(self) -> None:
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale: must be [low, high] with 0 < low <= high <= 1 (open_clip uses [0.9, 1.0]), "
                             f"got {self.scale!r}")
        for name in ("color_jitter_prob", "gray_scale_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be a probability in [0, 1], got {getattr(self, name)!r}")
        if self.color_jitter is not None and not (len(self.color_jitter) == 4 and all(v >= 0 for v in self.color_jitter)):
            raise ValueError(f"color_jitter: must be [brightness, contrast, saturation, hue] >= 0 "
                             f"(SimCLR uses [0.4, 0.4, 0.4, 0.1]), got {self.color_jitter!r}")
        if self.color_jitter_prob > 0 and self.color_jitter is None:
            raise ValueError("color_jitter_prob: needs color_jitter = [brightness, contrast, saturation, hue]; "
                             "set it, or color_jitter_prob=0")

    @property
    def pixel_ops(self) -> list[str]:
        """The keys that change pixel values after the crop (the device decoder only crops)."""
        return [name for name in ("color_jitter_prob", "gray_scale_prob") if getattr(self, name) > 0]

    def open_clip_cfg(self) -> dict[str, Any]:
        """The `aug_cfg` for open_clip.transform.image_transform_v2 (only what is switched on)."""
        cfg: dict[str, Any] = {"scale": tuple(self.scale)}
        if self.color_jitter_prob > 0:
            cfg["color_jitter"], cfg["color_jitter_prob"] = tuple(self.color_jitter), self.color_jitter_prob
        if self.gray_scale_prob > 0:
            cfg["gray_scale_prob"] = self.gray_scale_prob
        return cfg


def train_transform(preprocess_cfg: dict, augment: AugmentConfig) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
    """open_clip's train transform for a model's `preprocess_cfg` with these augmentations, ending in
    uint8 pixels: (transform, mean, std); the float conversion and Normalize run on the device."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clip_pretrain.data.device import split_normalize

    with warnings.catch_warnings():
        # open_clip 3.3 pops only `scale` before this check, so it calls the jitter and grayscale keys
        # it has just applied "unused"; the transform test shows they are used.
        warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
        transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=True, aug_cfg=augment.open_clip_cfg())
    return split_normalize(transform)
