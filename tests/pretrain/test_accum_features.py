"""loss.accum_features (pretrain/accum.py): one cached step over K micro-batches of B takes the
gradient of one step over a batch of K*B, with the same logged loss.

Fast tests drive cached_train_step with a stand-in engine (plain autograd, no DeepSpeed); the slow
ones run the real engine at ZeRO 0/2/3 in 1 and 2 processes (tests/pretrain/accum_probe.py).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_pretrain.pretrain.accum import scale_gradient
from clip_pretrain.pretrain.config import ConfigError, load_config
from clip_pretrain.pretrain.step import StepMetrics, train_step
from tests.pretrain.runner import run_module


class TinyDual(nn.Module):
    """Two linear towers with dropout on the image side: [B, 6] -> [B, 4] normalised features."""

    def __init__(self, dropout: float = 0.0, siglip: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(6, 4), nn.Linear(6, 4)
        self.dropout = nn.Dropout(dropout)
        self.logit_scale = nn.Parameter(torch.tensor([2.0]))
        self.logit_bias = nn.Parameter(torch.tensor([-1.0])) if siglip else None
        self.forwards: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict:
        image_features = F.normalize(self.dropout(self.image(images)), dim=-1)
        self.forwards.append(image_features.detach().clone())
        return {"image_features": image_features, "text_features": F.normalize(self.text(texts), dim=-1),
                "logit_scale": self.logit_scale.clone(),
                "logit_bias": self.logit_bias.clone() if self.logit_bias is not None else None}


class StandInEngine:
    """What train_step uses of a DeepSpeed engine at ZeRO 0, fp32: backward divides by K unless told not to."""

    def __init__(self, module: nn.Module, accum: int) -> None:
        self.module, self.accum = module, accum
        self.micro_steps = self.global_steps = 0

    def __call__(self, **inputs) -> dict:
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = True) -> None:
        (loss / self.accum if scale_wrt_gas else loss).backward()

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.accum == 0

    def step(self) -> None:  # the update itself is left out: the tests read the gradients
        self.global_steps += self.is_gradient_accumulation_boundary()
        self.micro_steps += 1


def config(accum: int, micro: int, *extra: str):
    return load_config(None, ["data.train=shards/", "zero.stage=0", "optim.grad_clip=0", f"grad_accum={accum}",
                              f"micro_batch={micro}", *extra])


def one_step(module: nn.Module, accum: int, micro: int, samples: dict, *extra: str) -> tuple[dict, float]:
    """(gradient per parameter, logged loss) of one train_step over `samples` split into `accum` micro-batches."""
    engine, cfg = StandInEngine(module, accum), config(accum, micro, *extra)
    batches = iter([{name: value[i * micro:(i + 1) * micro] for name, value in samples.items()} for i in range(accum)])
    metrics = StepMetrics(torch.device("cpu"))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    assert train_step(engine, optimizer, batches, cfg, 0, 1, metrics) == accum * micro
    grads = {name: param.grad.clone() for name, param in module.named_parameters()}
    return grads, metrics.read()["loss"]


def samples(count: int) -> dict:
    generator = torch.Generator().manual_seed(3)
    return {"images": torch.randn(count, 6, generator=generator), "texts": torch.randn(count, 6, generator=generator)}


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_cached_step_takes_the_big_batch_gradient(kind):
    """Also fails if logit_scale's gradient were not scaled by 1/K (it would be K times too large)."""
    data = samples(12)
    siglip = kind == "siglip"
    big, big_loss = one_step(TinyDual(siglip=siglip), 1, 12, data, f"loss.kind={kind}")
    cached, cached_loss = one_step(TinyDual(siglip=siglip), 3, 4, data, f"loss.kind={kind}", "loss.accum_features=true")
    assert cached_loss == pytest.approx(big_loss, rel=1e-6)
    assert big["logit_scale"].abs().max() > 1e-3  # the comparison below means something
    for name in big:
        torch.testing.assert_close(cached[name], big[name], rtol=1e-5, atol=1e-7, msg=name)


def test_plain_accumulation_differs_from_the_big_batch():
    """Without the cache each micro-batch has its own negatives: the gradient is not the big batch's."""
    data = samples(12)
    big, _ = one_step(TinyDual(), 1, 12, data)
    plain, _ = one_step(TinyDual(), 3, 4, data)
    assert not torch.allclose(plain["image.weight"], big["image.weight"], rtol=1e-3)


def test_second_pass_repeats_the_first_pass_dropout_masks():
    module = TinyDual(dropout=0.5)
    one_step(module, 2, 4, samples(8), "loss.accum_features=true")
    first_pass, second_pass = module.forwards[:2], module.forwards[2:]
    for cached, fresh in zip(first_pass, second_pass):
        assert torch.equal(cached, fresh)
    assert not torch.equal(first_pass[0], first_pass[1])


def test_accum_features_without_accumulation_is_the_plain_step():
    module = TinyDual()
    one_step(module, 1, 8, samples(8), "loss.accum_features=true")
    assert len(module.forwards) == 1  # no second pass


def test_scale_gradient_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([0.3, -1.7, 4.1], requires_grad=True)
    y = scale_gradient(x, 1 / 3)
    assert torch.equal(y, x.detach())
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 1 / 3))


def test_accum_features_config():
    assert load_config(None, ["data.train=shards/"]).loss.accum_features is False
    assert load_config(None, ["data.train=shards/", "loss.accum_features=true", "grad_accum=1"]).loss.accum_features
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=shards/", "loss.accum_features=2"])
    assert str(info.value).startswith("config key loss.accum_features:") and "\n" not in str(info.value)


def probe(nproc: int, stage: int) -> dict:
    args = ["-m", "tests.pretrain.accum_probe", "2", "4", f"zero.stage={stage}"]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return json.loads(run_module(args, timeout=600).stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_deepspeed_cached_step_takes_the_big_batch_gradient(nproc, stage):
    """Every parameter's gradient (ZeRO's full fp32 gradient at the boundary) and the logged loss of
    one cached step of 2 x 4 per rank equal one step of 8 per rank, MLM off and on."""
    for mlm, found in probe(nproc, stage).items():
        assert found["loss_cached"] == pytest.approx(found["loss_big"], rel=1e-6), (mlm, found)
        assert found["max_grad"]["clip.logit_scale"] > 1e-3
        for name, diff in found["max_diff"].items():
            assert diff <= 1e-6 + 1e-4 * found["max_grad"][name], (mlm, name, diff, found["max_grad"][name])


@pytest.mark.slow
def test_cached_step_has_no_device_read(demo_shards, tmp_path):
    """The cache adds no host read: saving and restoring RNG states reads host-side generator state."""
    from tests.pretrain.test_step_sync import probe as sync_probe

    found = sync_probe(demo_shards, tmp_path, "zero.stage=0", "precision=bf16", "loss.mlm_weight=0.5",
                       "loss.accum_features=true")
    assert found["steps"] == 5 and found["step_reads"] == {}, found
