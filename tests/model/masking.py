"""The loader's MLM masking (data.masking) with open_clip's special ids, for model tests."""

from __future__ import annotations

import torch

from clip_pretrain.data.masking import mask_tokens as loader_mask_tokens


def mask_tokens(
    input_ids: torch.Tensor, mask_token_id: int, probability: float = 0.15, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip vocabularies end with SOT, EOT; the mask id is one past them; pad is 0."""
    return loader_mask_tokens(
        input_ids,
        mask_token_id=mask_token_id,
        vocab_size=mask_token_id,
        special_ids=(0, mask_token_id - 2, mask_token_id - 1),
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        probability=probability,
    )
