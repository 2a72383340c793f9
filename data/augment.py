"""Train-time image augmentation: the `augment` config section, handed to open_clip's own transform.

The keys are open_clip's `AugmentationCfg` (open_clip_train's `--aug-cfg`), so a recipe moves between
the two trainers unchanged: `augment.scale=[0.5,1.0]` here is `--aug-cfg scale='(0.5,1.0)'` there.
open_clip builds the crop; the SimCLR-style colour jitter and grayscale follow it as in open_clip,
taken from torchvision so that every random draw comes from torch's per-sample seeded generator
(`train_transform` says why). This module validates the values and says which of them the device
decoder can reproduce.

No horizontal flip, on purpose (open_clip has none either): captions say "on the left".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


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


def train_transform(preprocess_cfg: dict, augment: AugmentConfig) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
    """open_clip's train transform for a model's `preprocess_cfg` (its RandomResizedCrop at
    `augment.scale`) with the colour steps after the crop, as open_clip orders them, ending in uint8
    pixels: (transform, mean, std); the float conversion and Normalize run on the device.

    The colour steps are torchvision's RandomApply(ColorJitter) and RandomGrayscale, the same
    operations as open_clip's `color_jitter` / `gray_scale`, which draw their coin from Python's
    `random`: torchvision's draw from torch's generator, which the loader already seeds per sample,
    so resume stays exact without seeding a second RNG for every sample.
    """
    import torchvision.transforms as T
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clip_pretrain.data.device import split_normalize

    base = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=True, aug_cfg={"scale": tuple(augment.scale)})
    colour = []
    if augment.color_jitter_prob > 0:
        colour.append(T.RandomApply([T.ColorJitter(*augment.color_jitter)], p=augment.color_jitter_prob))
    if augment.gray_scale_prob > 0:
        colour.append(T.RandomGrayscale(p=augment.gray_scale_prob))
    steps = base.transforms  # [RandomResizedCrop, MaybeConvertMode, ToTensor, Normalize]
    return split_normalize(T.Compose([*steps[:-2], *colour, *steps[-2:]]))
