"""MLM masking: BERT statistics, special tokens never touched, at least one target per caption."""
from __future__ import annotations

import torch

from clip_pretrain.data.masking import IGNORE_INDEX, mask_tokens
from tests.data_loader.loader_helpers import take, write_shards

SOT, EOT, PAD, VOCAB = 49406, 49407, 0, 49408


def _tokens(rows: int = 4000, length: int = 32, seed: int = 0) -> torch.Tensor:
    """[rows, length] sot, 5..25 real ids, eot, pad."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(rows, length, dtype=torch.long)
    lengths = torch.randint(5, 26, (rows,), generator=generator)
    for row, n in enumerate(lengths.tolist()):
        tokens[row, 0], tokens[row, n + 1] = SOT, EOT
        tokens[row, 1:n + 1] = torch.randint(1, SOT, (n,), generator=generator)
    return tokens


def _mask(tokens: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_tokens(tokens, mask_token_id=VOCAB, vocab_size=VOCAB, special_ids=(SOT, EOT, PAD),
                       generator=torch.Generator().manual_seed(seed), probability=0.15)


def test_statistics():
    tokens = _tokens()
    input_ids, labels = _mask(tokens)
    real = (tokens != SOT) & (tokens != EOT) & (tokens != PAD)
    selected = labels != IGNORE_INDEX
    rate = selected.sum() / real.sum()
    # 15% plus the forced pick in rows that drew none (0.85^n, ~3% of rows of mean length 15)
    assert 0.145 <= rate <= 0.165, rate
    masked = selected & (input_ids == VOCAB)
    kept = selected & (input_ids == tokens)
    replaced = selected & (input_ids != VOCAB) & (input_ids != tokens)
    n = selected.sum()
    assert abs(masked.sum() / n - 0.8) < 0.02
    assert abs(kept.sum() / n - 0.1) < 0.02
    assert abs(replaced.sum() / n - 0.1) < 0.02
    assert torch.equal(labels[selected], tokens[selected])
    assert torch.equal(input_ids[~selected], tokens[~selected])


def test_special_tokens_never_masked_and_random_ids_are_real():
    tokens = _tokens()
    input_ids, labels = _mask(tokens, seed=1)
    special = ~((tokens != SOT) & (tokens != EOT) & (tokens != PAD))
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(input_ids[special], tokens[special])
    replaced = (labels != IGNORE_INDEX) & (input_ids != VOCAB) & (input_ids != tokens)
    assert not torch.isin(input_ids[replaced], torch.tensor([SOT, EOT, PAD])).any()
    assert (input_ids[replaced] < VOCAB).all() and (input_ids[replaced] > 0).all()


def test_at_least_one_target_per_caption_and_none_without_real_tokens():
    tokens = _tokens(rows=500)
    tokens[:, 2:] = torch.where(tokens[:, 2:] == SOT, PAD, tokens[:, 2:])
    tokens[0] = 0
    tokens[0, 0], tokens[0, 1] = SOT, EOT  # an empty caption
    tokens[1, 2:] = 0
    tokens[1, 2] = EOT  # one real token: always selected
    input_ids, labels = _mask(tokens, seed=2)
    per_row = (labels != IGNORE_INDEX).sum(dim=1)
    assert per_row[0] == 0 and per_row[1] == 1 and (per_row[1:] >= 1).all()


def test_deterministic_given_the_generator():
    tokens = _tokens(rows=64)
    first, second, other = _mask(tokens, 5), _mask(tokens, 5), _mask(tokens, 6)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_loader_adds_mlm_fields(tmp_path, make_loader):
    write_shards(tmp_path, [8, 8])
    batch = take(make_loader(str(tmp_path), mlm_probability=0.15), 1)[0]
    texts, input_ids, labels = batch["texts"], batch["mlm_input_ids"], batch["mlm_labels"]
    assert input_ids.shape == labels.shape == texts.shape == (4, 77)
    assert ((labels != IGNORE_INDEX).sum(dim=1) >= 1).all()
    assert (input_ids == VOCAB).any()  # mask id = tokenizer vocab size (contract)
    assert batch["images"].shape == (4, 3, 32, 32)
