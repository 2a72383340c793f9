"""Image validation, RGB conversion, resizing and JPEG re-encoding for the shard builder.

Every failure mode of an input image maps to a skip reason (``SkipImage.reason``) so the builder
can count it instead of crashing.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own default (~89.5 Mpx): beyond this a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485
# Larger image files are skipped unread: a multi-gigabyte "image" would exhaust a worker's memory.
DEFAULT_MAX_BYTES = 256 * 2**20


class SkipImage(Exception):
    """An image that must be skipped; ``reason`` is the stats key (e.g. ``corrupt_image``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageOptions:
    """How images are validated and re-encoded."""

    max_side: int = 512
    min_side: int = 16
    jpeg_quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_side < 1:
            raise ValueError(f"max_side: must be >= 1, got {self.max_side}; pass a positive size")
        if self.min_side < 1 or self.min_side > self.max_side:
            raise ValueError(f"min_side: must be in [1, max_side={self.max_side}], got {self.min_side}; lower it")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality: must be in [1, 100], got {self.jpeg_quality}; pick e.g. 90")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels: must be >= 1, got {self.max_pixels}; pass a pixel count")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes: must be >= 1, got {self.max_bytes}; pass a file size in bytes")


@dataclass(frozen=True)
class ProcessedImage:
    """A re-encoded image: RGB JPEG bytes plus its new and original sizes."""

    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int


def content_digest(data: bytes) -> str:
    """Hash of the raw file bytes, used to find exact duplicates."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode ``data``; raises SkipImage(corrupt_image | too_large)."""
    if not data:
        raise SkipImage("corrupt_image", "zero-byte file")
    # PIL reads the pixel limit from a module global; set it here because each worker
    # process has its own copy, and make its warning an error so both bomb levels skip.
    previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise SkipImage("too_large", f"{image.width}x{image.height} px")
            image.load()  # decode now: truncated files fail here, not later in resize
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SkipImage("too_large", str(err)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise SkipImage("corrupt_image", str(err)) from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit  # in-process builds must not change the caller's limit
    return image


def exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF must not drop an otherwise good image
        return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8-bit 'L' (PIL's convert clips instead)."""
    array = np.asarray(image)
    if image.mode == "F":
        peak = float(array.max()) if array.size else 0.0
        scale = 255.0 if peak <= 1.0 else (255.0 / 65535.0 if peak > 255.0 else 1.0)
        scaled = array.astype(np.float64) * scale
    elif image.mode.startswith("I;16") or array.dtype == np.uint16 or (array.size and array.max() > 255):
        scaled = array.astype(np.float64) / 257.0  # 65535 -> 255
    else:
        scaled = array.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: transparency is composited on white, 16-bit is rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _sixteen_bit_to_l(image).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        return _composite_on_white(image)
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def resize_max_side(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is ``max_side``, keeping aspect ratio; never upscales."""
    width, height = image.size
    longest = max(width, height)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def process_image(data: bytes, options: ImageOptions) -> ProcessedImage:
    """Validate, orient, convert to RGB, resize and re-encode ``data`` as JPEG.

    Raises SkipImage with reason corrupt_image, too_large or too_small.
    """
    image = open_image(data, options.max_pixels)
    image = exif_transpose(image)
    original_width, original_height = image.size
    if min(original_width, original_height) < options.min_side:
        raise SkipImage("too_small", f"{original_width}x{original_height} px")
    try:
        rgb = resize_max_side(to_rgb(image), options.max_side)
        jpeg = encode_jpeg(rgb, options.jpeg_quality)
    except (OSError, ValueError) as err:  # odd modes that decode but cannot convert
        raise SkipImage("corrupt_image", str(err)) from err
    return ProcessedImage(jpeg, rgb.width, rgb.height, original_width, original_height)
