"""Unit tests for data.images: RGB conversion, resizing and skip reasons."""
from __future__ import annotations

import io

import numpy as np
import pytest
from tests.data_build.helpers import encode, gradient_rgb, messy_images, png_header_only
from PIL import Image

from clip_pretrain.data.images import ImageOptions, SkipImage, process_image, resize_max_side, to_rgb


def decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return image


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))
    rgb = to_rgb(rgba)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (255, 0, 0)


def test_palette_transparency_composited_on_white() -> None:
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    rgb = to_rgb(palette)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (0, 200, 0)


@pytest.mark.parametrize("value,expected", [(0, 0), (65535, 255), (32896, 128)])
def test_sixteen_bit_scaled_not_clipped(value: int, expected: int) -> None:
    image = Image.open(io.BytesIO(encode(Image.fromarray(np.full((3, 3), value, dtype=np.uint16)), "PNG")))
    rgb = to_rgb(image)
    assert rgb.getpixel((1, 1)) == (expected,) * 3


def test_cmyk_and_grey_convert() -> None:
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)


def test_resize_keeps_aspect_and_never_upscales() -> None:
    assert resize_max_side(Image.new("RGB", (400, 100)), 200).size == (200, 50)
    assert resize_max_side(Image.new("RGB", (100, 400)), 200).size == (50, 200)
    assert resize_max_side(Image.new("RGB", (30, 20)), 200).size == (30, 20)


def test_process_image_reencodes_and_applies_exif() -> None:
    images = messy_images()
    result = process_image(images["orient"][1], ImageOptions(max_side=512))
    assert (result.width, result.height) == (20, 40)  # rotated per EXIF
    processed = process_image(encode(gradient_rgb(300, 150), "PNG"), ImageOptions(max_side=64, jpeg_quality=80))
    image = decode(processed.jpeg)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 32)
    assert (processed.original_width, processed.original_height) == (300, 150)


@pytest.mark.parametrize("name", ["corrupt", "truncated", "zero_bytes", "not_an_image"])
def test_broken_files_are_corrupt(name: str) -> None:
    with pytest.raises(SkipImage) as raised:
        process_image(messy_images()[name][1], ImageOptions())
    assert raised.value.reason == "corrupt_image"


def test_decompression_bomb_and_pixel_limit() -> None:
    with pytest.raises(SkipImage) as raised:
        process_image(png_header_only(30000, 30000), ImageOptions())
    assert raised.value.reason == "too_large"
    # a lowered limit catches the warning-level case too (between 1x and 2x the limit)
    with pytest.raises(SkipImage) as raised:
        process_image(encode(gradient_rgb(60, 60), "PNG"), ImageOptions(max_pixels=2500))
    assert raised.value.reason == "too_large"
    assert Image.MAX_IMAGE_PIXELS != 2500  # the process-wide limit is restored


def test_too_small() -> None:
    with pytest.raises(SkipImage) as raised:
        process_image(encode(Image.new("RGB", (8, 30)), "PNG"), ImageOptions(min_side=16))
    assert raised.value.reason == "too_small"


def test_options_validate() -> None:
    with pytest.raises(ValueError, match="^jpeg_quality:"):
        ImageOptions(jpeg_quality=0)
    with pytest.raises(ValueError, match="^min_side:"):
        ImageOptions(max_side=32, min_side=64)
