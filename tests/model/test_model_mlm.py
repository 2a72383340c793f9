"""MLM: bidirectional second pass, [MASK] handling, ZeRO-3 registration, and that it learns."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch

from clip_pretrain.pretrain.losses import LossConfig, mlm_loss
from clip_pretrain.pretrain.mlm import key_padding_mask
from tests.model.masking import mask_tokens
from clip_pretrain.pretrain.model import ModelConfig, build_model

COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
THINGS = [("dog", "grass"), ("cat", "sofa"), ("car", "street"), ("boat", "lake"), ("bird", "tree")]
CAPTIONS = [f"a {colour} {thing} on the {place}" for colour in COLOURS for thing, place in THINGS]  # 30


def test_no_mlm_parameters_when_weight_is_zero(tiny_infonce) -> None:
    assert tiny_infonce.mlm is None
    assert not any("mlm" in name or "mask_embedding" in name for name, _ in tiny_infonce.named_parameters())
    with pytest.raises(ValueError, match="^mlm_input_ids: "):
        tiny_infonce(texts=torch.ones(1, 32, dtype=torch.long), mlm_input_ids=torch.ones(1, 32, dtype=torch.long))


def test_mask_tokens_only_masks_caption_tokens() -> None:
    texts = open_clip.get_tokenizer("clip-tiny")(CAPTIONS)
    masked, labels = mask_tokens(texts, 49408, probability=0.5, generator=torch.Generator().manual_seed(0))
    selected = labels != -100
    eot = texts.argmax(dim=1, keepdim=True)
    positions = torch.arange(texts.shape[1])[None]
    assert not selected[:, 0].any() and not (selected & (positions >= eot)).any()
    assert torch.equal(labels[selected], texts[selected])
    assert torch.equal(masked[~selected], texts[~selected])
    assert (masked == 49408).sum() > 0.6 * selected.sum()  # ~80% of selected become [MASK]
    assert masked[masked != 49408].max() == 49407  # the EOT stays the only highest regular id


def test_mlm_pass_is_bidirectional_and_contrastive_pass_untouched(tiny_mlm) -> None:
    tiny_mlm.eval()
    texts = open_clip.get_tokenizer("clip-tiny")(["a red dog on the grass"])
    masked = texts.clone()
    masked[0, 2] = 49408
    changed = masked.clone()
    changed[0, 4] = texts[0, 5]  # a token AFTER the mask position
    with torch.no_grad():
        first = tiny_mlm(texts=texts, mlm_input_ids=masked)
        second = tiny_mlm(texts=texts, mlm_input_ids=changed)
        plain = tiny_mlm(texts=texts)
    assert not torch.allclose(first["mlm_logits"][0, 2], second["mlm_logits"][0, 2])  # sees the future
    assert torch.equal(first["text_features"], plain["text_features"])
    assert first["mlm_logits"].shape == (1, 32, 49408)
    # Pads after EOT are hidden keys: real positions do not depend on how many pads follow.
    short = masked[:, :16]
    with torch.no_grad():
        cut = tiny_mlm(mlm_input_ids=short)["mlm_logits"]
    eot = int(texts.argmax())
    assert torch.allclose(first["mlm_logits"][0, : eot + 1], cut[0, : eot + 1], atol=1e-5)


def test_key_padding_mask_hides_only_trailing_pads() -> None:
    ids = torch.tensor([[49406, 0, 5, 49407, 0, 0]])  # the inner 0 is a real token ('!')
    mask = key_padding_mask(ids, heads=2, dtype=torch.float32)
    assert mask.shape == (2, 6, 6)
    assert torch.isinf(mask[:, :, 4:]).all() and (mask[:, :, :4] == 0).all()

def test_external_parameters_registered_and_harmless(tiny_mlm) -> None:
    clip = tiny_mlm.clip
    assert set(tiny_mlm.mlm._external_params) == {id(clip.positional_embedding), id(clip.token_embedding.weight)}
    assert set(tiny_mlm._external_params) == {id(clip.logit_scale)}
    # Without ZeRO-3 the registration only adds a dict: state dict, copies and outputs are unaffected.
    assert not any("external" in key for key in tiny_mlm.state_dict())
    duplicate = copy.deepcopy(tiny_mlm)
    texts = open_clip.get_tokenizer("clip-tiny")(CAPTIONS[:2])
    masked, _ = mask_tokens(texts, 49408, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = tiny_mlm.eval()(texts=texts, mlm_input_ids=masked), duplicate.eval()(texts=texts, mlm_input_ids=masked)
    assert torch.equal(a["mlm_logits"], b["mlm_logits"])


def compact_vocabulary_model(tmp_path: Path, vocab_ids: torch.Tensor) -> str:
    """Register a clip-tiny variant whose vocabulary is only the ids used by CAPTIONS (fast CE)."""
    cfg = json.loads((Path(__file__).resolve().parents[2] / "pretrain/model_configs/clip-tiny.json").read_text())
    cfg["text_cfg"].update(vocab_size=len(vocab_ids), context_length=16)
    path = tmp_path / "clip-tiny-mlmtest.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return path.stem


@pytest.mark.slow
def test_mlm_learns_masked_tokens_above_unigram_baseline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokens = open_clip.get_tokenizer("clip-tiny")(CAPTIONS, context_length=16)
    # Rank-preserving remap to a compact vocabulary: pad 0 stays 0, EOT stays the highest id.
    vocab_ids = torch.unique(torch.cat([tokens.flatten(), torch.tensor([0])]))
    texts = torch.searchsorted(vocab_ids, tokens)
    model = build_model(ModelConfig(name=compact_vocabulary_model(tmp_path, vocab_ids)), LossConfig(mlm_weight=1.0))
    mask_id = model.mlm.mask_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):  # MLM only: the image tower would only add CPU time here
        masked, labels = mask_tokens(texts, mask_id, probability=0.3, generator=generator)
        loss, _ = mlm_loss(model(mlm_input_ids=masked)["mlm_logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Evaluate every caption token masked on its own.
    eot = texts.argmax(dim=1)
    rows, cols = zip(*[(r, c) for r in range(len(texts)) for c in range(1, int(eot[r]))])
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    probes = texts[rows].clone()
    probes[torch.arange(len(rows)), cols] = mask_id
    model.eval()
    with torch.no_grad():
        logits = model(mlm_input_ids=probes)["mlm_logits"][torch.arange(len(rows)), cols]
    targets = texts[rows, cols]
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    unigram = torch.bincount(targets).max().item() / len(targets)
    print(f"masked-token accuracy {accuracy:.2f} vs unigram baseline {unigram:.2f}")
    assert accuracy > unigram + 0.3, (accuracy, unigram)
