"""The `Encoder` protocol every evaluator consumes, plus an adapter for training models."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16")


@runtime_checkable
class Encoder(Protocol):
    """What evaluation needs from a model: L2-normalised embeddings, preprocessing, tokenizer."""

    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> L2-normalised features [B, D]."""
        ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> L2-normalised features [B, D]."""
        ...


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    return precision


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the model's device type, or a no-op for fp32."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class ForwardEncoder:
    """Encoder over a training model whose `forward(images=..., texts=...)` returns a dict.

    Encoding goes through forward on purpose: ZeRO-3 only gathers partitioned weights inside
    forward, so calling a submodule's encode_* directly would see empty parameters.
    """

    def __init__(
        self,
        forward: Callable[..., dict],
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.forward = forward
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.precision = check_precision(precision)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> [B, D] (L2-normalised, fp32)."""
        with torch.no_grad(), autocast_context(self.device, self.precision):
            features = self.forward(images=images.to(self.device))["image_features"]
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> [B, D] (L2-normalised, fp32)."""
        with torch.no_grad(), autocast_context(self.device, self.precision):
            features = self.forward(texts=tokens.to(self.device))["text_features"]
        return F.normalize(features.float(), dim=-1)
