"""The MLM head can project only the masked positions: same loss and accuracy as the full [B, L, V]."""

import open_clip
import torch

from clip_pretrain.pretrain.losses import LossConfig, compute_objective
from clip_pretrain.pretrain.model import ModelConfig, build_model
from tests.model.masking import mask_tokens


def test_masked_positions_only_equals_full_logits() -> None:
    torch.manual_seed(0)
    cfg = LossConfig(mlm_weight=0.5)
    model = build_model(ModelConfig(name="clip-tiny"), cfg)
    texts = open_clip.get_tokenizer("clip-tiny")(["a red circle on the left", "a small blue square", "a green star"])
    ids, labels = mask_tokens(texts, 49408, probability=0.5, generator=torch.Generator().manual_seed(1))
    images = torch.randn(3, 3, 64, 64)
    full = model(images, texts, ids)
    compact = model(images, texts, ids, labels)
    assert full["mlm_logits"].shape[:2] == texts.shape
    assert compact["mlm_logits"].shape[0] == int((labels != -100).sum()) == compact["mlm_targets"].shape[0]
    full_loss, full_parts = compute_objective(full, {"mlm_labels": labels}, cfg)
    compact_loss, compact_parts = compute_objective(compact, {"mlm_labels": labels}, cfg)
    torch.testing.assert_close(compact_loss, full_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(compact_parts["mlm_accuracy"], full_parts["mlm_accuracy"])
