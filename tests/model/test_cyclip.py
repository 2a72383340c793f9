"""CyCLIP's cyclic consistency terms (Goel et al., NeurIPS 2022): values against hand-computed and
reference-formula numbers, zero for identical modalities, gradients, the objective and config
wiring, and 2 gloo processes against one process on the concatenated batch."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clip_pretrain.pretrain.config import ConfigError, load_config
from clip_pretrain.pretrain.losses import LossConfig, clip_loss, compute_objective, cyclip_losses
from tests.model.test_model_dist import free_port

PER_RANK, DIM, WORLD = 3, 8, 2


def features(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(rows, DIM, generator=generator), dim=-1),
            F.normalize(torch.randn(rows, DIM, generator=generator), dim=-1))


def test_hand_computed_two_pairs() -> None:
    # I T^T = [[1, .6], [0, .8]]: its antisymmetric part has .6 off the diagonal -> 2 * .36 / N=2;
    # T T^T has .6 off the diagonal where I I^T = eye -> the same .36.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    cross, inmodal = cyclip_losses(images, texts)
    assert cross.item() == pytest.approx(0.36) and inmodal.item() == pytest.approx(0.36)


def test_matches_the_reference_formulation() -> None:
    """The CyCLIP code's form: mean of squared differences of scaled logits / scale^2 * batch size."""
    images, texts = features(6)
    image, text, scale = images.double().numpy(), texts.double().numpy(), math.exp(math.log(1 / 0.07))
    logits_text_per_image = scale * image @ text.T
    reference_cross = np.mean((logits_text_per_image - logits_text_per_image.T) ** 2) / scale**2 * 6
    reference_inmodal = np.mean((scale * image @ image.T - scale * text @ text.T) ** 2) / scale**2 * 6
    cross, inmodal = cyclip_losses(images, texts)
    assert cross.item() == pytest.approx(reference_cross, rel=1e-5)
    assert inmodal.item() == pytest.approx(reference_inmodal, rel=1e-5)


def test_zero_when_images_equal_texts() -> None:
    images, _ = features(5)
    cross, inmodal = cyclip_losses(images, images.clone())
    assert cross.item() == pytest.approx(0.0, abs=1e-7) and inmodal.item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_reach_both_towers() -> None:
    images, texts = (t.clone().requires_grad_(True) for t in features(4))
    cross, inmodal = cyclip_losses(images, texts)
    (cross + inmodal).backward()
    for grad in (images.grad, texts.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bf16_features_give_an_fp32_loss() -> None:
    images, texts = features(4)
    cross, _ = cyclip_losses(images.bfloat16(), texts.bfloat16())
    assert cross.dtype == torch.float32 and cross.item() == pytest.approx(cyclip_losses(images, texts)[0].item(), rel=2e-2)


def outputs_for(images: torch.Tensor, texts: torch.Tensor, kind: str = "infonce") -> dict:
    outputs = {"image_features": images, "text_features": texts, "logit_scale": torch.tensor(math.log(10.0))}
    if kind == "siglip":
        outputs["logit_bias"] = torch.tensor(-10.0)
    return outputs


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_objective_adds_the_weighted_terms_and_logs_them(kind: str) -> None:
    images, texts = features(4)
    base, base_parts = compute_objective(outputs_for(images, texts, kind), {}, LossConfig(kind=kind))
    assert "cyclip_cross" not in base_parts and "cyclip_inmodal" not in base_parts  # off: no log columns
    cfg = LossConfig(kind=kind, cyclip_cross_weight=0.25, cyclip_inmodal_weight=0.5)
    total, parts = compute_objective(outputs_for(images, texts, kind), {}, cfg)
    cross, inmodal = cyclip_losses(images, texts)
    assert parts["cyclip_cross"].item() == pytest.approx(cross.item())
    assert parts["cyclip_inmodal"].item() == pytest.approx(inmodal.item())
    assert total.item() == pytest.approx(base.item() + 0.25 * cross.item() + 0.5 * inmodal.item(), rel=1e-6)
    only_cross = compute_objective(outputs_for(images, texts, kind), {}, LossConfig(kind=kind, cyclip_cross_weight=1.0))
    assert set(only_cross[1]) & {"cyclip_cross", "cyclip_inmodal"} == {"cyclip_cross"}


@pytest.mark.parametrize("key, value", [("cyclip_cross_weight", -0.1), ("cyclip_inmodal_weight", float("nan")),
                                        ("cyclip_inmodal_weight", float("inf")), ("cyclip_cross_weight", "x")])
def test_loss_config_refuses_bad_weights(key: str, value) -> None:
    with pytest.raises(ValueError, match=f"^{key}: must be a finite number >= 0"):
        LossConfig(**{key: value})


def test_config_keys_load_and_refuse_in_one_line() -> None:
    config = load_config("pretrain/configs/smoke.yaml", ["loss.cyclip_cross_weight=0.25", "loss.cyclip_inmodal_weight=0.25"])
    assert (config.loss.cyclip_cross_weight, config.loss.cyclip_inmodal_weight) == (0.25, 0.25)
    with pytest.raises(ConfigError, match=r"^config key loss.cyclip_inmodal_weight: must be a finite number >= 0") as error:
        load_config("pretrain/configs/smoke.yaml", ["loss.cyclip_inmodal_weight=-1"])
    assert "\n" not in str(error.value)


# --- 2 gloo processes vs one process on the concatenated batch ------------------------------------------

CASES = {"gather": {}, "local": {"local_loss": True}}


def run_case(images, texts, raw, rank: int, world_size: int, **kwargs) -> dict[str, torch.Tensor]:
    """CyCLIP terms plus InfoNCE with the same gather (as compute_objective adds them), and the grads."""
    images, texts, raw = (t.clone().requires_grad_(True) for t in (images, texts, raw))
    cross, inmodal = cyclip_losses(images, texts, rank=rank, world_size=world_size, **kwargs)
    contrastive = clip_loss(images, texts, raw, rank=rank, world_size=world_size, **kwargs)
    loss = contrastive + 0.25 * cross + 0.5 * inmodal
    loss.backward()
    return {"loss": loss.detach(), "cross": cross.detach(), "inmodal": inmodal.detach(),
            "images": images.grad, "texts": texts.grad, "raw": raw.grad}


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        images, texts = features(world_size * PER_RANK, seed=7)
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        raw = torch.tensor([math.log(10.0)])
        results = {case: run_case(images[local], texts[local], raw, rank, world_size, **kwargs)
                   for case, kwargs in CASES.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(worker, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    images, texts = features(WORLD * PER_RANK, seed=7)
    single = run_case(images, texts, torch.tensor([math.log(10.0)]), 0, 1)
    for case in CASES:
        per_rank = [r[case] for r in ranks]
        for key in ("loss", "cross", "inmodal"):  # the engine's rank average is the global loss
            assert torch.allclose(torch.stack([r[key] for r in per_rank]).mean(), single[key], atol=1e-5), (case, key)
        assert torch.allclose(torch.stack([r["raw"] for r in per_rank]).mean(0), single["raw"], atol=1e-5), case
        for key in ("images", "texts"):  # gather with grad: each rank holds world_size x its share
            gathered = torch.cat([r[key] for r in per_rank]) / WORLD
            assert torch.allclose(gathered, single[key], atol=1e-5), (case, key)
