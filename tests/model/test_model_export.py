"""Export to open_clip's format and initialisation from a local open_clip checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from clip_pretrain.pretrain.losses import LossConfig
from clip_pretrain.pretrain.model import ModelConfig, build_model


def batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    texts = open_clip.get_tokenizer(name)(["a red dog on the grass", "a boat on a lake", "two cats"])
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)), texts


@pytest.mark.parametrize("kind,mlm_weight", [("infonce", 0.0), ("siglip", 0.2)])
def test_export_loads_in_open_clip_with_same_embeddings(kind: str, mlm_weight: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="clip-tiny"), LossConfig(kind=kind, mlm_weight=mlm_weight)).eval()
    with torch.no_grad():  # move logit params off their init so a dropped tensor would show
        model.clip.logit_scale.fill_(3.0)
    state = model.open_clip_state_dict()
    assert not any("mlm" in key or key.startswith("clip.") for key in state)
    assert state["logit_scale"].shape == torch.Size([])
    if kind == "infonce":
        path = tmp_path / "model.pt"
        torch.save(state, path)
        loaded, _, _ = open_clip.create_model_and_transforms("clip-tiny", pretrained=str(path))
    else:  # SigLIP needs the exported model cfg (it adds init_logit_bias): load it as open_clip's local-dir
        torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model.model_config}))
        loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    loaded.eval()
    images, texts = batch("clip-tiny")
    with torch.no_grad():
        ours = model(images, texts)
        image_ref = loaded.encode_image(images, normalize=True)
        text_ref = loaded.encode_text(texts, normalize=True)
    assert torch.allclose(ours["image_features"], image_ref, atol=1e-5)
    assert torch.allclose(ours["text_features"], text_ref, atol=1e-5)
    assert loaded.logit_scale.item() == pytest.approx(3.0)
    if kind == "siglip":
        assert loaded.logit_bias.item() == pytest.approx(-10.0)
    expected_cfg = open_clip.get_model_config("clip-tiny") | ({"init_logit_bias": -10.0} if kind == "siglip" else {})
    assert model.model_config == expected_cfg


def test_init_from_local_open_clip_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = open_clip.create_model("clip-tiny")  # plain open_clip: 0-dim logit_scale
    path = tmp_path / "init.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)  # DDP-style file
    model = build_model(ModelConfig(name="clip-tiny", pretrained=str(path), lock_image=True), LossConfig(mlm_weight=0.2))
    for key, value in source.state_dict().items():
        assert torch.equal(model.clip.state_dict()[key].reshape(value.shape), value), key
    assert model.clip.logit_scale.shape == (1,)
    images, texts = batch("clip-tiny")
    source.eval(), model.eval()
    with torch.no_grad():
        assert torch.allclose(model(images, texts)["image_features"], source.encode_image(images, normalize=True), atol=1e-6)
    assert not any(p.requires_grad for p in model.clip.visual.parameters())
    assert model.mlm.mask_embedding.requires_grad
