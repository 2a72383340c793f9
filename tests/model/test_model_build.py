"""Model configs, build options (locks, checkpointing, logit shapes) and attention backend."""
from __future__ import annotations

import math

import open_clip
import pytest
import torch

from clip_pretrain.pretrain.losses import LossConfig, compute_objective
from tests.model.masking import mask_tokens
from clip_pretrain.pretrain.model import SHIPPED_CONFIGS, ModelConfig, build_model, main, parameter_counts


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_config_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    loss_cfg = LossConfig(kind="infonce", mlm_weight=0.2)
    model = build_model(ModelConfig(name=name), loss_cfg)
    size = model.clip.visual.image_size  # a ViT tower holds (h, w), a ResNet tower one int
    size = size if isinstance(size, int) else size[0]
    texts = open_clip.get_tokenizer(name)(["a dog on the grass", "two cats asleep"])
    masked, labels = mask_tokens(texts, model.mlm.mask_token_id, probability=0.5, generator=torch.Generator().manual_seed(0))
    outputs = model(torch.randn(2, 3, size, size), texts, masked)
    assert outputs["image_features"].shape == outputs["text_features"].shape == (2, model.model_config["embed_dim"])
    assert torch.allclose(outputs["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert outputs["logit_scale"].shape == (1,) and outputs["logit_bias"] is None
    total, _ = compute_objective(outputs, {"mlm_labels": labels}, loss_cfg)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_tiny_config_size() -> None:
    assert 1e6 <= parameter_counts("clip-tiny")["total"] <= 5e6
    assert 20e6 <= parameter_counts("clip-small")["total"] <= 40e6


def test_list_cli(capsys) -> None:
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in (*SHIPPED_CONFIGS, "ViT-B-32")) and "151.28M" in printed


def test_siglip_init_and_nonscalar_logit_params() -> None:
    model = build_model(ModelConfig(name="clip-tiny"), LossConfig(kind="siglip"))
    outputs = model(texts=torch.zeros(1, 32, dtype=torch.long))
    assert model.clip.logit_scale.shape == model.clip.logit_bias.shape == (1,)
    assert outputs["logit_scale"].item() == pytest.approx(math.log(10)) and outputs["logit_bias"].item() == -10
    assert outputs["image_features"] is None and not isinstance(outputs["logit_scale"], torch.nn.Parameter)


def test_lock_image_tower_freezes_only_the_image_tower() -> None:
    model = build_model(ModelConfig(name="clip-tiny", lock_image=True), LossConfig())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("clip.visual.")}
    partly = build_model(ModelConfig(name="clip-tiny", lock_image=True, lock_image_unlocked_groups=1), LossConfig())
    trainable = {n for n, p in partly.clip.visual.named_parameters() if p.requires_grad}
    assert trainable == {"proj"}  # open_clip's last ViT group is the output projection


def test_lock_text_tower_and_grad_checkpointing() -> None:
    model = build_model(ModelConfig(name="clip-tiny", lock_text=True, grad_checkpointing=True), LossConfig())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "clip.token_embedding.weight" in frozen and "clip.transformer.resblocks.1.mlp.c_fc.weight" in frozen
    assert not any(n.startswith("clip.visual.") for n in frozen) and "clip.logit_scale" not in frozen
    assert model.clip.transformer.grad_checkpointing and model.clip.visual.transformer.grad_checkpointing
    outputs = model(torch.randn(2, 3, 64, 64), torch.randint(0, 100, (2, 32)))
    compute_objective(outputs, {}, LossConfig())[0].backward()
    assert model.clip.visual.conv1.weight.grad is not None


def test_attention_runs_through_sdpa(monkeypatch) -> None:
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model = build_model(ModelConfig(name="clip-tiny"), LossConfig(mlm_weight=0.2)).train()
    model(torch.randn(1, 3, 64, 64), torch.randint(0, 100, (1, 32)), torch.randint(0, 100, (1, 32)))
    assert len(calls) == 2 + 2 + 2  # vision, causal text and bidirectional MLM pass, 2 layers each


@pytest.mark.parametrize("kwargs,field", [
    ({"name": "ViT-Nope"}, "name"),
    ({"name": "coca_ViT-B-32"}, "name"),
    ({"pretrained": "/nonexistent/model.pt"}, "pretrained"),
    ({"pretrained": "no-such-tag"}, "pretrained"),
    ({"lock_image_unlocked_groups": -1}, "lock_image_unlocked_groups"),
    ({"lock_text": "yes"}, "lock_text"),
])
def test_model_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: ") as error:
        ModelConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="clip-tiny.*ViT-B-32"):
        ModelConfig(name="ViT-Nope")


def test_uncached_tag_names_the_file_and_never_downloads(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(ValueError, match="^pretrained: weights for ViT-B-32/openai are not in the local cache") as error:
        ModelConfig(name="ViT-B-32", pretrained="openai")
    assert "ViT-B-32.pt" in str(error.value) or "open_clip" in str(error.value)
