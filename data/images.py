"""Image validation, resizing and JPEG re-encoding (or pass-through) for the shard builder.

Decoding itself (bomb limit, EXIF orientation, RGB conversion) is data.decode's, shared with the
loader and eval.

Every failure mode of an input image maps to a skip reason (``SkipImage.reason``) so the builder
can count it instead of crashing.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from clip_pretrain.data.decode import MAX_PIXELS, ImageTooLarge, decode_image, to_rgb  # noqa: F401 - to_rgb: callers import it here

DEFAULT_MAX_PIXELS = MAX_PIXELS  # the decompression-bomb limit every decoder shares (data.decode)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises on bytes that are no image
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
    reencode: bool = False  # False: a JPEG that already fits the policy is stored byte for byte

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


def passes_through(data: bytes, decoded: Image.Image, options: ImageOptions) -> bool:
    """Whether ``data`` may be stored as it is: a baseline RGB JPEG (what re-encoding would write)
    within ``max_side``, with no EXIF block (an orientation to apply, or camera/GPS metadata that
    re-encoding would drop). Re-encoding it would only lose quality and time."""
    if options.reencode or max(decoded.size) > options.max_side:
        return False
    source = Image.open(io.BytesIO(data))  # the header again: decoded images no longer say their format
    return source.format == "JPEG" and source.mode == "RGB" and not source.info.get("exif")


def process_image(data: bytes, options: ImageOptions) -> ProcessedImage:
    """Validate, orient, convert to RGB, resize and re-encode ``data`` as JPEG; a JPEG that already
    fits (``passes_through``) keeps its bytes.

    Raises SkipImage with reason corrupt_image, too_large or too_small.
    """
    try:
        image = decode_image(data, max_pixels=options.max_pixels)
    except ImageTooLarge as err:
        raise SkipImage("too_large", str(err)) from err
    except DECODE_ERRORS as err:  # odd modes that decode but cannot convert land here too
        raise SkipImage("corrupt_image", str(err) or "zero-byte file") from err
    original_width, original_height = image.size
    if min(original_width, original_height) < options.min_side:
        raise SkipImage("too_small", f"{original_width}x{original_height} px")
    if passes_through(data, image, options):
        return ProcessedImage(data, original_width, original_height, original_width, original_height)
    try:
        rgb = resize_max_side(image, options.max_side)
        jpeg = encode_jpeg(rgb, options.jpeg_quality)
    except (OSError, ValueError) as err:
        raise SkipImage("corrupt_image", str(err)) from err
    return ProcessedImage(jpeg, rgb.width, rgb.height, original_width, original_height)
