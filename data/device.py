"""Batches from host to accelerator: uint8 images, pinned memory, one batch copied ahead on a side
stream, normalisation on the device.

Workers hand out images as uint8 [B, 3, H, W] (4x fewer bytes through worker pipes, pinning and
the PCIe copy than fp32); `split_normalize` takes the float conversion and Normalize off the end
of a torchvision train transform so the device does them, with the same arithmetic
(ToTensor's /255, then Normalize's (x - mean) / std), so values equal the CPU transform's.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import torch
from torchvision import transforms as T

from clip_pretrain.data.device_decode import DeviceDecoder


def split_normalize(transform: Callable) -> tuple[T.Compose, tuple[float, ...], tuple[float, ...]]:
    """(transform ending in PILToTensor (uint8), mean, std) from a Compose ending in ToTensor, Normalize.

    Raises ValueError when the transform does not end that way (nothing to move to the device).
    """
    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        raise ValueError(f"transform: expected a Compose ending in ToTensor, Normalize, got {transform!r}")
    normalize = steps[-1]
    return T.Compose([*steps[:-2], T.PILToTensor()]), tuple(normalize.mean), tuple(normalize.std)


class DeviceNormalizer:
    """uint8 [B, 3, H, W] -> float32 (x / 255 - mean) / std on the images' device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"images: expected uint8 from the loader, got {images.dtype}")
        mean, std = self._constants(images.device)
        return images.float().div_(255).sub_(mean).div_(std)

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:  # built once per device: a host->device copy each step would block
            shape = (1, len(self.mean), 1, 1)
            self._cache[device] = (torch.tensor(self.mean, device=device).view(shape),
                                   torch.tensor(self.std, device=device).view(shape))
        return self._cache[device]


class DeviceBatches:
    """Iterates a StreamingLoader's batches as dicts on `device`, images normalised.

    On CUDA the next batch is pinned (if the DataLoader did not already) and copied on a side
    stream while the current one computes; the compute stream waits on that copy only when it
    takes the batch. `state_dict()` is the loader's state after the last batch handed out here,
    not after the one fetched ahead, so a checkpoint resumes exactly. `wait_s` adds up the host
    time spent waiting for the loader.
    """

    def __init__(self, loader, device: torch.device, normalize: DeviceNormalizer,
                 decode: DeviceDecoder | None = None) -> None:
        self.loader, self.device, self.normalize, self.decode = loader, device, normalize, decode
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.wait_s = 0.0
        self.position = loader.position()
        self._batches: Iterator[dict] | None = None
        self._next: dict | None = None

    def __iter__(self) -> Iterator[dict]:
        return self

    def state_dict(self) -> dict:
        return self.loader.state_dict(self.position)

    def __next__(self) -> dict:
        batch = self._next if self._next is not None else self._fetch()
        self._next = None
        self.position = self.loader.position()  # before fetching ahead
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for value in batch.values():
                if torch.is_tensor(value):
                    value.record_stream(current)  # the copy stream's allocation is used here
        # Fetch ahead on every device (on CPU it only keeps the saved-position logic exercised):
        # on CUDA this queues the next copy behind this batch's compute.
        self._next = self._fetch()
        batch["images"] = self.normalize(batch["images"])
        return batch

    def _fetch(self) -> dict:
        start = time.perf_counter()
        if self._batches is None:
            self._batches = iter(self.loader)
        batch = next(self._batches)
        self.wait_s += time.perf_counter() - start
        if self.stream is None:
            return self._to_device(batch)
        with torch.cuda.stream(self.stream):  # the copies (and a device decode) overlap the current step
            return self._to_device(batch)

    def _to_device(self, batch: dict) -> dict:
        if "jpegs" in batch:  # data.decode=gpu: the images are made on the device
            if self.decode is None:
                raise ValueError("data.decode: the loader ships JPEG bytes but no DeviceDecoder was given")
            batch = self.decode(batch)
        pin = self.stream is not None  # page-locked host memory: the copy to CUDA is asynchronous
        return {k: (_pinned(v) if pin else v).to(self.device, non_blocking=pin) if torch.is_tensor(v) else v
                for k, v in batch.items()}


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.device.type != "cpu" or tensor.is_pinned() else tensor.pin_memory()
