"""Image decoding for the loader, with optional reduced-size JPEG decode.

libjpeg can decode at 1/2, 1/4 or 1/8 scale almost for free (DCT scaling, PIL ``Image.draft``).
When the stored JPEG is much larger than what the model transform keeps, decoding at the
smallest scale that is still at least the transform's resize target gives the same pixels to
the resize up to resampling noise, at a fraction of the decode cost.
"""
from __future__ import annotations

import io
from typing import Callable

from PIL import Image


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


def decode_image(data: bytes, draft_side: int | None = None) -> Image.Image:
    """RGB PIL image from encoded bytes; JPEGs at least twice ``draft_side`` decode at reduced scale.

    Raises OSError/ValueError (from PIL) on corrupt data; ``load()`` forces the full decode here so
    that truncated files fail inside the loader's skip handling, not later in the transform.
    """
    image = Image.open(io.BytesIO(data))
    if draft_side and image.format == "JPEG" and min(image.size) >= 2 * draft_side:
        image.draft("RGB", (draft_side, draft_side))
    image.load()
    return image.convert("RGB")
