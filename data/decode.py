"""Image decoding for the loader, with optional reduced-size JPEG decode.

libjpeg can decode at 1/2, 1/4 or 1/8 scale almost for free (DCT scaling, PIL ``Image.draft``).
When the stored JPEG is much larger than what the model transform keeps, decoding at the
smallest scale that is still at least the transform's resize target gives the same pixels to
the resize up to resampling noise, at a fraction of the decode cost.
"""
from __future__ import annotations

import io
import math
from typing import Callable

from PIL import Image
from torchvision import transforms as T


def resize_target(preprocess: Callable) -> int | None:
    """The smallest image side (px) that ``preprocess`` needs to keep full quality, or None if unknown.

    Resize/CenterCrop: their size. RandomResizedCrop(size, scale, ratio): the smallest crop is
    ``scale[0]`` of the area at aspect ``ratio[1]``, whose short side is ``sqrt(scale[0]/ratio[1])`` of
    the image side, so the image needs ``size * sqrt(ratio[1] / scale[0])``.
    """
    steps = getattr(preprocess, "transforms", [preprocess])
    for step in steps:
        size = getattr(step, "size", None)
        if size is None:
            continue
        side = max(size) if isinstance(size, (tuple, list)) else int(size)
        if isinstance(step, T.RandomResizedCrop):
            return math.ceil(side * math.sqrt(max(step.ratio) / min(step.scale)))
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
