"""Image decoding: the one function the shard builder, the training loader and eval decode with.

Every caller gets the same decompression-bomb limit (``MAX_PIXELS``, checked from the header
before any pixel is decoded), the same EXIF orientation and the same RGB conversion (transparency
composited on white, 16-bit rescaled), so an image means the same pixels to all three.

libjpeg can decode at 1/2, 1/4 or 1/8 scale almost for free (DCT scaling, PIL ``Image.draft``).
When the stored JPEG is much larger than what the model transform keeps, decoding at the
smallest scale that is still at least the transform's resize target gives the same pixels to
the resize up to resampling noise, at a fraction of the decode cost.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

# PIL's own default (~89.5 Mpx): beyond this a file is treated as a decompression bomb. Read at
# call time, so one setting (or a test's monkeypatch) reaches the builder, the loader and eval alike.
MAX_PIXELS = 89_478_485
EXIF_ORIENTATION = 0x0112


class ImageTooLarge(ValueError):
    """More pixels than the decompression-bomb limit (a ValueError: decode-error handlers catch it)."""


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The image's header, checked against the pixel limit; pixels are not decoded yet.

    Raises ImageTooLarge, or OSError/ValueError/SyntaxError (from PIL) on bytes that are no image.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ValueError("zero-byte image")
    # PIL reads its bomb limit from a module global; set ours for the open (each worker process has
    # its own copy) and make its warning an error, so both of PIL's levels are refused alike.
    previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(str(err)) from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit  # in-process callers keep their own limit
    if image.width * image.height > limit:
        raise ImageTooLarge(f"{image.width}x{image.height} px is more than {limit} px")
    return image


def exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return image  # exif_transpose would return a full copy: the loader's hot path skips it
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


def decode_image(data: bytes, draft_side: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """RGB PIL image from encoded bytes, upright per EXIF; JPEGs at least twice ``draft_side``
    decode at reduced scale. ``max_pixels``: the bomb limit (None: ``MAX_PIXELS``).

    Raises ImageTooLarge, or OSError/ValueError/SyntaxError (from PIL) on corrupt data; ``load()``
    forces the full decode here so that truncated files fail inside the caller's skip handling,
    not later in a transform.
    """
    image = open_image(data, max_pixels)
    if draft_side and image.format == "JPEG" and min(image.size) >= 2 * draft_side:
        image.draft("RGB", (draft_side, draft_side))
    image.load()
    return to_rgb(exif_transpose(image))


def resize_target(preprocess: Callable) -> int | None:
    """The image side (px) to decode at for ``preprocess``, or None if unknown.

    Resize/CenterCrop: their size. RandomResizedCrop(size, scale, ratio): its output size. A crop
    of the drafted image is then at least ``sqrt(scale[0] / ratio[1])`` of that side (0.82 for
    open_clip's scale 0.9 and ratio 4/3), so the most extreme crops are upsampled by at most ~20%,
    typical ones not at all; in exchange a 512 px JPEG feeding a 224 px model decodes at half
    resolution (libjpeg DCT scaling), about 3x less decode work.
    """
    steps = getattr(preprocess, "transforms", [preprocess])
    for step in steps:
        size = getattr(step, "size", None)
        if size is None:
            continue
        side = max(size) if isinstance(size, (tuple, list)) else int(size)
        return side
    return None
