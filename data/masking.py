"""Masked-language-model corruption of token ids (BERT recipe), a pure function of its inputs."""
from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100  # label value that torch.nn.functional.cross_entropy skips by default


def mask_tokens(
    tokens: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    generator: torch.Generator,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select ``probability`` of the real tokens; 80% -> mask id, 10% -> random real token, 10% kept.

    tokens: long [B, L]. special_ids: ids never selected (start/end of text, pad).
    Every row with at least one real token gets at least one selected token, so each caption
    contributes to the MLM loss. Returns (input_ids [B, L], labels [B, L]) with labels equal to
    the original id at selected positions and -100 elsewhere.
    """
    specials = torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype)
    real = ~torch.isin(tokens, specials)
    selected = real & (torch.rand(tokens.shape, generator=generator) < probability)
    _select_one_where_none(selected, real, generator)

    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = _random_real_ids(tokens.shape, vocab_size, specials, generator)
    input_ids = torch.where(to_mask, torch.full_like(tokens, mask_token_id), tokens)
    input_ids = torch.where(to_random, random_ids, input_ids)
    return input_ids, labels


def _select_one_where_none(selected: torch.Tensor, real: torch.Tensor, generator: torch.Generator) -> None:
    """In place: rows with real tokens but no selection get one uniformly chosen real token."""
    empty_rows = (~selected.any(dim=1) & real.any(dim=1)).nonzero().flatten()
    if empty_rows.numel() == 0:
        return
    # Random scores, -1 on non-real positions: the argmax is a uniform pick among real tokens.
    scores = torch.rand(real[empty_rows].shape, generator=generator).masked_fill(~real[empty_rows], -1.0)
    selected[empty_rows, scores.argmax(dim=1)] = True


def _random_real_ids(shape: torch.Size, vocab_size: int, specials: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """Uniform ids in [0, vocab_size) excluding ``specials`` (sorted): draw a rank among the allowed
    ids, then shift it past each special id at or below it."""
    in_vocab = specials[specials < vocab_size]
    ids = torch.randint(0, vocab_size - len(in_vocab), shape, generator=generator, dtype=specials.dtype)
    for special in in_vocab.tolist():
        ids += (ids >= special).to(ids.dtype)
    return ids
