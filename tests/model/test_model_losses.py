"""Losses against open_clip's reference implementations and hand computations (1 process)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from clip_pretrain.pretrain.losses import LossConfig, clip_loss, compute_objective, mlm_loss, param_groups, siglip_loss


def unit_features(batch: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("local_loss", [False, True])
def test_clip_loss_matches_open_clip_value_and_grads(local_loss: bool) -> None:
    images, texts = unit_features(6, 8, 1), unit_features(6, 8, 2)
    raw = torch.tensor([math.log(1 / 0.07)])
    ours = leaves(images, texts, raw)
    theirs = leaves(images, texts, raw)
    loss = clip_loss(*ours, local_loss=local_loss)
    reference = ClipLoss(local_loss=local_loss, gather_with_grad=True)(theirs[0], theirs[1], theirs[2].exp())
    loss.backward()
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    for mine, ref in zip(ours, theirs):
        assert torch.allclose(mine.grad, ref.grad, atol=1e-6)


def test_clip_loss_hand_computed_both_directions() -> None:
    # Asymmetric similarities: a swapped direction (rows vs columns) gives a different value.
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    texts = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    scale = 3.0
    sim = scale * images @ texts.T
    image_to_text = -(torch.log_softmax(sim, dim=1).diagonal()).mean()
    text_to_image = -(torch.log_softmax(sim, dim=0).diagonal()).mean()
    expected = (image_to_text + text_to_image) / 2
    assert torch.allclose(clip_loss(images, texts, torch.tensor([math.log(scale)])), expected, atol=1e-6)
    # A wrong temperature (e.g. using the raw log-scale as multiplier) is caught.
    assert not torch.allclose(clip_loss(images, texts, torch.tensor([scale])), expected, atol=1e-3)


def test_clip_loss_clamps_temperature_inside_the_loss() -> None:
    images, texts = unit_features(4, 8, 3), unit_features(4, 8, 4)
    raw = torch.tensor([math.log(200.0)], requires_grad=True)
    loss = clip_loss(images, texts, raw, max_logit_scale=100.0)
    loss.backward()
    assert torch.allclose(loss, ClipLoss()(images, texts, torch.tensor(100.0)), atol=1e-6)
    assert raw.grad.abs().item() == 0.0  # clamped: the scale stops growing


@pytest.mark.parametrize("raw_scale,bias", [(math.log(10.0), -10.0), (1.3, 0.7)])
def test_siglip_matches_open_clip_value_and_grads(raw_scale: float, bias: float) -> None:
    images, texts = unit_features(5, 8, 5), unit_features(5, 8, 6)
    raw, logit_bias = torch.tensor([raw_scale]), torch.tensor([bias])
    ours = leaves(images, texts, raw, logit_bias)
    theirs = leaves(images, texts, raw, logit_bias)
    loss = siglip_loss(*ours)
    reference = SigLipLoss()(theirs[0], theirs[1], theirs[2].exp(), theirs[3])
    loss.backward()
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    for mine, ref in zip(ours, theirs):
        assert torch.allclose(mine.grad, ref.grad, atol=1e-6)


def test_siglip_hand_computed() -> None:
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logits = 2.0 * images @ texts.T - 1.0
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    expected = -F.logsigmoid(signs * logits).sum() / 2
    got = siglip_loss(images, texts, torch.tensor([math.log(2.0)]), torch.tensor([-1.0]))
    assert torch.allclose(got, expected, atol=1e-6)


def test_mlm_loss_only_masked_positions() -> None:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 4, 7, int(logits[1, 4].argmax())
    loss, accuracy = mlm_loss(logits, labels)
    expected = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, expected, atol=1e-6)
    predictions = logits.argmax(-1)
    hits = sum(int(predictions[b, p] == labels[b, p]) for b, p in [(0, 1), (1, 3), (1, 4)])
    assert accuracy.item() == pytest.approx(hits / 3)
    empty_loss, empty_accuracy = mlm_loss(logits, torch.full((2, 5), -100))
    assert empty_loss.item() == 0.0 and empty_accuracy.item() == 0.0


def test_compute_objective_total_and_parts() -> None:
    images, texts = unit_features(4, 8, 8), unit_features(4, 8, 9)
    raw = torch.tensor([math.log(20.0)])
    logits = torch.randn(4, 6, 13, generator=torch.Generator().manual_seed(1))
    labels = torch.full((4, 6), -100)
    labels[:, 2] = 3
    outputs = {"image_features": images, "text_features": texts, "logit_scale": raw, "logit_bias": None,
               "mlm_logits": logits}
    cfg = LossConfig(kind="infonce", mlm_weight=0.2)
    total, parts = compute_objective(outputs, {"mlm_labels": labels}, cfg)
    contrastive = clip_loss(images, texts, raw)
    mlm, accuracy = mlm_loss(logits, labels)
    assert torch.allclose(total, contrastive + 0.2 * mlm, atol=1e-6)
    assert set(parts) == {"contrastive", "mlm", "mlm_accuracy", "temperature"}
    assert parts["temperature"].item() == pytest.approx(20.0, rel=1e-5)
    assert all(not value.requires_grad for value in parts.values())
    off_total, off_parts = compute_objective(outputs, {}, LossConfig(kind="infonce"))
    assert torch.allclose(off_total, contrastive) and off_parts["mlm"].item() == 0.0


def test_compute_objective_siglip_needs_bias() -> None:
    outputs = {"image_features": unit_features(2, 4, 1), "text_features": unit_features(2, 4, 2),
               "logit_scale": torch.tensor([1.0]), "logit_bias": None}
    with pytest.raises(ValueError, match="^outputs: logit_bias"):
        compute_objective(outputs, {}, LossConfig(kind="siglip"))


@pytest.mark.parametrize("field,value", [("kind", "triplet"), ("mlm_weight", -1.0), ("mlm_probability", 1.5),
                                         ("max_logit_scale", 0.5), ("local_loss", "yes")])
def test_loss_config_errors_name_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        LossConfig(**{field: value})


def test_param_groups_split_on_real_model(tiny_mlm) -> None:
    groups = param_groups(tiny_mlm, weight_decay=0.1)
    names = {id(p): n for n, p in tiny_mlm.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names.values())
    for name in ("clip.token_embedding.weight", "clip.positional_embedding", "clip.visual.class_embedding",
                 "clip.visual.positional_embedding", "clip.logit_scale", "clip.ln_final.weight",
                 "clip.visual.ln_pre.weight", "mlm.mask_embedding",
                 "mlm.head.bias", "mlm.head.dense.bias", "clip.transformer.resblocks.0.attn.in_proj_bias"):
        assert name in no_decay, name
    for name in ("clip.visual.conv1.weight", "clip.text_projection", "clip.visual.proj", "mlm.head.dense.weight",
                 "clip.transformer.resblocks.0.attn.in_proj_weight", "clip.visual.transformer.resblocks.1.mlp.c_fc.weight"):
        assert name in decay, name


def test_param_groups_skip_frozen(tiny_infonce) -> None:
    tiny_infonce.clip.lock_image_tower()
    grouped = {id(p) for group in param_groups(tiny_infonce, 0.1) for p in group["params"]}
    assert all(id(p) not in grouped for p in tiny_infonce.clip.visual.parameters())
    assert id(tiny_infonce.clip.token_embedding.weight) in grouped
