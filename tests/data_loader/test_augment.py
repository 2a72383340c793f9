"""The `augment` config section: validated at load, built into open_clip's train transform, cropped
alike by the device decoder, refused where the device decoder cannot reproduce it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from clip_pretrain.data.augment import AugmentConfig, train_transform
from clip_pretrain.data.device_decode import CropPlan
from clip_pretrain.pretrain.config import load_config

PREPROCESS = {"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
              "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
JITTER = [0.8, 0.8, 0.8, 0.2]


def photo() -> Image.Image:
    coarse = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((48, 40), Image.BICUBIC)


def pixels(augment: AugmentConfig, seed: int = 0) -> torch.Tensor:
    transform, _, _ = train_transform(PREPROCESS, augment)
    torch.manual_seed(seed)
    return transform(photo())


def test_defaults_are_open_clips_crop_only() -> None:
    transform, mean, std = train_transform(PREPROCESS, AugmentConfig())
    crop = transform.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.9, 1.0)
    assert isinstance(transform.transforms[-1], T.PILToTensor)  # uint8 out, Normalize on the device
    assert (mean, std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert not any(isinstance(step, (T.RandomApply, T.RandomGrayscale)) for step in transform.transforms)


def test_each_key_reaches_the_transform() -> None:
    augment = AugmentConfig(scale=[0.3, 0.6], color_jitter=JITTER, color_jitter_prob=0.8, gray_scale_prob=0.2)
    transform, _, _ = train_transform(PREPROCESS, augment)
    assert transform.transforms[0].scale == (0.3, 0.6)
    jitter = next(step for step in transform.transforms if isinstance(step, T.RandomApply))
    grey = next(step for step in transform.transforms if isinstance(step, T.RandomGrayscale))
    assert jitter.p == 0.8 and grey.p == 0.2
    assert jitter.transforms[0].brightness == pytest.approx((0.2, 1.8)) and jitter.transforms[0].hue == (-0.2, 0.2)
    # open_clip's order: crop, colour, grey, then the uint8 conversion
    assert [type(step) for step in transform.transforms].index(T.RandomApply) == 2
    assert isinstance(transform.transforms[-1], T.PILToTensor)
    assert CropPlan.from_transform(train_transform(PREPROCESS, AugmentConfig(scale=[0.3, 0.6]))[0]).scale == (0.3, 0.6)


def test_pixel_augmentations_change_pixels_and_repeat_under_a_seed() -> None:
    plain = pixels(AugmentConfig())
    grey = pixels(AugmentConfig(gray_scale_prob=1.0))
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2]) and not torch.equal(plain[0], plain[1])
    jittered = pixels(AugmentConfig(color_jitter=JITTER, color_jitter_prob=1.0))
    assert (jittered.float() - plain.float()).abs().mean() > 5  # same crop (same seed), other colours
    assert torch.equal(jittered, pixels(AugmentConfig(color_jitter=JITTER, color_jitter_prob=1.0)))
    assert not torch.equal(jittered, pixels(AugmentConfig(color_jitter=JITTER, color_jitter_prob=1.0), seed=1))


@pytest.mark.parametrize("override, message", [
    ("augment.scale=[0,1]", r"config key augment.scale: must be \[low, high\] with 0 < low <= high <= 1"),
    ("augment.scale=[0.9,0.5]", "config key augment.scale: must be"),
    ("augment.scale=[0.5]", "config key augment.scale: must be"),
    ("augment.gray_scale_prob=1.5", r"config key augment.gray_scale_prob: must be a probability in \[0, 1\]"),
    ("augment.color_jitter=[0.4,0.4,0.4]", r"config key augment.color_jitter: must be \[brightness, contrast"),
    ("augment.color_jitter_prob=0.8", "config key augment.color_jitter_prob: needs color_jitter"),
    ("augment.flip=true", "config key augment.flip: unknown key; valid keys under augment: color_jitter,"),
])
def test_bad_values_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        load_config("pretrain/configs/smoke.yaml", [override])


def test_device_decode_refuses_colour_augmentation() -> None:
    load_config("pretrain/configs/smoke.yaml", ["data.decode=gpu", "augment.scale=[0.5,1.0]"])  # crops are fine
    with pytest.raises(ValueError, match="^config key augment.gray_scale_prob: data.decode=gpu only crops"):
        load_config("pretrain/configs/smoke.yaml", ["data.decode=gpu", "augment.gray_scale_prob=0.2"])


def test_augmentation_draws_only_from_torchs_generator() -> None:
    """The loader seeds torch's generator per sample (so a resumed run augments alike); nothing in
    the train transform may draw from Python's `random` (open_clip's own jitter/grayscale do)."""
    import random

    transform, _, _ = train_transform(PREPROCESS, AugmentConfig(color_jitter=JITTER, color_jitter_prob=0.5,
                                                                gray_scale_prob=0.5))
    images = []
    for outside in (1, 2):
        random.seed(outside)
        torch.manual_seed(7)
        images.append(torch.stack([transform(photo()) for _ in range(8)]))
        assert random.random() == random.Random(outside).random()  # Python's stream was not drawn from
    assert torch.equal(images[0], images[1])
    assert len({image.float().mean().item() for image in images[0]}) > 1  # the coins did vary per image
