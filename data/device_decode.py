"""JPEG decode and crop on the trainer's device (``data.decode: gpu``).

With CPU decode, loader workers spend most of their time in libjpeg: at ~2.3k img/s on 16 cores
they, not the GPU, cap a ViT-B-32 step. With ``decode: gpu`` a worker only parses the JPEG header,
checks the file is whole (decode limits, end-of-image marker) and draws the crop, so it ships the
encoded bytes plus ``(top, left, height, width)``; the trainer decodes the batch with nvJPEG
(``torchvision.io.decode_jpeg`` on CUDA, one batched call) and crops/resizes each image with
torchvision's tensor ops. Images that are not baseline RGB/greyscale JPEGs (PNG, CMYK, ...)
are decoded on the worker's CPU as before and travel as pixels, so a batch mixes both.

Crop geometry equals the CPU transform's for the same per-sample seed: the worker draws the crop
with ``RandomResizedCrop.get_params`` under the same seeded generator the CPU path uses, on the
image's full size (so ``data.fast_decode``, which shrinks the CPU path's decoded size, does not
apply here). Pixels differ only by the decoder and the resampling kernel (PIL vs torch bicubic
with antialiasing; a level or two of 255).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from open_clip.transform import MaybeConvertMode
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from clip_pretrain.data.decode import EXIF_ORIENTATION, decode_image, open_image

log = logging.getLogger(__name__)

DECODES = ("cpu", "gpu")
DEVICE_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes to RGB like PIL's convert("RGB")
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class CropPlan:
    """The random crop of a train transform RandomResizedCrop -> (convert RGB) -> PILToTensor."""

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: T.InterpolationMode
    antialias: bool

    @classmethod
    def from_transform(cls, transform: Callable) -> CropPlan:
        """Raises ValueError, naming the transform, for anything else: only this shape is decoded on the device."""
        steps = list(getattr(transform, "transforms", [transform]))
        kinds = [type(step) for step in steps]
        if kinds not in ([T.RandomResizedCrop, MaybeConvertMode, T.PILToTensor], [T.RandomResizedCrop, T.PILToTensor]):
            raise ValueError(f"data.decode: 'gpu' supports the train transform RandomResizedCrop -> PILToTensor, got "
                             f"{[k.__name__ for k in kinds]}; use data.decode=cpu")
        crop = steps[0]
        return cls(tuple(crop.size), tuple(crop.scale), tuple(crop.ratio), crop.interpolation, bool(crop.antialias))

    def params(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) drawn from torch's default generator, as the CPU transform draws it."""
        shape_only = torch.empty(1, 1, 1).expand(1, height, width)  # get_params reads only the size
        return tuple(T.RandomResizedCrop.get_params(shape_only, list(self.scale), list(self.ratio)))  # type: ignore[return-value]

    def apply(self, image: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
        """uint8 [3, H, W] -> uint8 [3, *size], cropped and resized like the CPU transform."""
        top, left, height, width = crop
        return F.resized_crop(image, top, left, height, width, list(self.size),
                              interpolation=self.interpolation, antialias=self.antialias)


@dataclass(frozen=True)
class EncodedImage:
    """A JPEG left for the device: its bytes and the crop drawn for it."""

    data: torch.Tensor  # uint8 [N]
    crop: tuple[int, int, int, int]


def prepare(data: bytes, plan: CropPlan) -> EncodedImage | None:
    """The worker's part: an EncodedImage (crop drawn from torch's default generator), or None when
    the image must be decoded on the CPU (not an RGB/greyscale JPEG, or rotated by its EXIF
    orientation). Raises OSError/ValueError for data the CPU path refuses too (unreadable header,
    over data.decode's decompression-bomb limit, cut-off file)."""
    with open_image(data) as image:  # the header only, checked against the shared pixel limit
        if image.format != "JPEG" or image.mode not in DEVICE_MODES or image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            return None
        width, height = image.size
    if not data.rstrip(b"\0").endswith(JPEG_END):  # cut-off files: the usual damage, caught before the device
        raise OSError("JPEG ends before its end-of-image marker (truncated file)")
    return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), plan.params(height, width))


def collate(images: list, plan: CropPlan) -> dict:
    """A batch's image entries: pixels of CPU-decoded images, bytes and crops of the rest."""
    on_device = [i for i, image in enumerate(images) if isinstance(image, EncodedImage)]
    on_cpu = [i for i, image in enumerate(images) if not isinstance(image, EncodedImage)]
    empty = torch.empty(0, 3, *plan.size, dtype=torch.uint8)
    return {
        "images": torch.stack([images[i] for i in on_cpu]) if on_cpu else empty,
        "images_index": torch.tensor(on_cpu, dtype=torch.long),
        "jpegs": [images[i].data for i in on_device],
        "jpegs_index": torch.tensor(on_device, dtype=torch.long),
        "jpegs_crop": torch.tensor([images[i].crop for i in on_device], dtype=torch.long).view(-1, 4),
    }


class DeviceDecoder:
    """The trainer's part: a batch from ``collate`` -> uint8 images [B, 3, *size] on ``device``."""

    def __init__(self, plan: CropPlan, device: torch.device) -> None:
        self.plan, self.device = plan, device
        self.failed = 0  # images neither nvJPEG nor PIL could decode (zeros in the batch, counted)

    def __call__(self, batch: dict) -> dict:
        jpegs, index, crops = batch.pop("jpegs"), batch.pop("jpegs_index"), batch.pop("jpegs_crop")
        cpu_images, cpu_index = batch.pop("images"), batch.pop("images_index")
        images = torch.empty(len(jpegs) + len(cpu_index), 3, *self.plan.size, dtype=torch.uint8, device=self.device)
        if len(cpu_index):
            pinned = cpu_images.pin_memory() if self.device.type == "cuda" else cpu_images
            images[cpu_index.to(self.device)] = pinned.to(self.device, non_blocking=True)
        # index and crops stay host tensors: reading them never waits for the device
        for slot, image, crop in zip(index.tolist(), self._decode(jpegs) if jpegs else [], crops.tolist()):
            images[slot] = self.plan.apply(image, crop) if image is not None else 0
        batch["images"] = images
        return batch

    def _decode(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        try:  # one batched nvJPEG call; on a CPU device, libjpeg-turbo through torchvision
            return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:  # one bad file fails the whole call: retry one by one, then on the CPU
            return [self._decode_one(data) for data in jpegs]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        try:
            return F.pil_to_tensor(decode_image(data.numpy().tobytes())).to(self.device)
        except Exception as exn:  # noqa: BLE001 - PIL raises many types; the image becomes zeros, counted
            self.failed += 1
            log.warning("data: an image passed the worker's checks but failed to decode (%s); it is zeros in this "
                        "batch (%d so far)", repr(exn)[:120], self.failed)
            return None
