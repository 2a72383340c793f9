"""EMA of the weights (pretrain/ema.py): update math, warmup decay, cadence, the evaluation swap,
state round trip, the export of EMA weights from a checkpoint and the ZeRO-3 refusal."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from clip_pretrain.common import checkpoint_files as ckpt
from clip_pretrain.pretrain.config import ConfigError, load_config
from clip_pretrain.pretrain.ema import EmaConfig, WeightEma, ema_weights, warmup_decay
from clip_pretrain.pretrain.losses import LossConfig
from clip_pretrain.pretrain.model import ModelConfig, build_model


def linear(weight: float, bias: float) -> nn.Linear:
    module = nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(weight)
        module.bias.fill_(bias)
    return module


def set_weights(module: nn.Linear, weight: float, bias: float) -> None:
    with torch.no_grad():
        module.weight.fill_(weight)
        module.bias.fill_(bias)


def test_warmup_decay() -> None:
    assert warmup_decay(0.9999, 0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert warmup_decay(0.9999, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.9, 100) == 0.9  # capped at the configured decay
    ramp = [warmup_decay(0.999, n) for n in range(10_000)]  # reaches 0.999 at n = 9 / (1 - 0.999) = 8991
    assert ramp == sorted(ramp) and ramp[-1] == 0.999


def test_update_matches_a_hand_computation() -> None:
    module = linear(1.0, 0.0)
    ema = WeightEma(module, EmaConfig(decay=0.9))
    set_weights(module, 3.0, 2.0)
    ema.update(module, step=1)  # decay (1+0)/(10+0) = 0.1: 0.1 * 1 + 0.9 * 3 = 2.8
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 2.8))
    assert torch.allclose(ema.shadow["bias"], torch.full((1,), 0.1 * 0.0 + 0.9 * 2.0))
    set_weights(module, 5.0, 0.0)
    ema.update(module, step=2)  # decay 2/11
    d = 2 / 11
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), d * 2.8 + (1 - d) * 5.0))
    assert torch.allclose(ema.shadow["bias"], torch.full((1,), d * 1.8))
    assert ema.updates == 2 and ema.shadow["weight"].dtype == torch.float32


def test_every_steps_skips_the_steps_between() -> None:
    module = linear(1.0, 0.0)
    ema = WeightEma(module, EmaConfig(decay=0.9, every_steps=2))
    set_weights(module, 3.0, 0.0)
    ema.update(module, step=1)
    assert ema.updates == 0 and torch.equal(ema.shadow["weight"], torch.ones(1, 2))
    ema.update(module, step=2)
    assert ema.updates == 1 and torch.allclose(ema.shadow["weight"], torch.full((1, 2), 2.8))


def test_frozen_weights_are_not_averaged_and_the_swap_restores() -> None:
    module = nn.Sequential(linear(1.0, 0.0), linear(7.0, 7.0))
    module[1].requires_grad_(False)
    ema = WeightEma(module, EmaConfig(decay=0.5))
    assert sorted(ema.shadow) == ["0.bias", "0.weight"]
    ema.shadow["0.weight"].fill_(-4.0)
    with ema_weights(ema, module):
        assert torch.equal(module[0].weight, torch.full((1, 2), -4.0))
        assert torch.equal(module[1].weight, torch.full((1, 2), 7.0))
    assert torch.equal(module[0].weight, torch.ones(1, 2))
    with ema_weights(None, module):  # EMA off: the module as it is
        assert torch.equal(module[0].weight, torch.ones(1, 2))


def test_state_round_trip_continues_identically(tmp_path) -> None:
    module = linear(1.0, 0.0)
    ema = WeightEma(module, EmaConfig(decay=0.99))
    for step in range(1, 4):
        set_weights(module, float(step), -float(step))
        ema.update(module, step)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    restored = WeightEma(linear(0.0, 0.0), EmaConfig(decay=0.99))
    restored.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert restored.updates == 3
    set_weights(module, 9.0, 9.0)
    ema.update(module, 4)
    restored.update(module, 4)
    for name in ema.shadow:
        assert torch.equal(ema.shadow[name], restored.shadow[name]), name
    with pytest.raises(KeyError, match="do not match"):
        WeightEma(nn.Linear(2, 1, bias=False), EmaConfig(decay=0.99)).load_state_dict(ema.state_dict())


def fake_checkpoint(tmp_path, with_ema: bool):
    """A ZeRO-0 checkpoint dir as pretrain.train writes it (module + client state), EMA moved away
    from the trained weights so the two exports differ."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="clip-tiny"), LossConfig())
    ema = WeightEma(model, EmaConfig(decay=0.9))
    for tensor in ema.shadow.values():
        tensor.add_(0.5)
    checkpoint = tmp_path / "checkpoints" / ckpt.tag_for_step(3)
    checkpoint.mkdir(parents=True)
    states = {"module": model.state_dict(), **({ckpt.EMA_STATE: ema.state_dict()} if with_ema else {})}
    torch.save(states, checkpoint / "mp_rank_00_model_states.pt")
    config = {"model_name": "clip-tiny", "model_cfg": model.model_config, "preprocess_cfg": model.clip.visual.preprocess_cfg}
    (checkpoint / ckpt.MODEL_CONFIG).write_text(json.dumps(config))
    (checkpoint / ckpt.COMPLETE).write_text("{}")
    return checkpoint, model, ema


def test_export_holds_the_ema_weights(tmp_path) -> None:
    checkpoint, model, ema = fake_checkpoint(tmp_path, with_ema=True)
    ckpt.export(checkpoint, tmp_path / "export", ema=True)
    ckpt.export(checkpoint, tmp_path / "export-raw")
    exported, raw = load_file(tmp_path / "export" / "model.safetensors"), load_file(tmp_path / "export-raw" / "model.safetensors")
    for name, tensor in model.open_clip_state_dict().items():
        assert torch.equal(raw[name], tensor), name
        shadow = ema.shadow["clip." + name].reshape(tensor.shape)
        assert torch.equal(exported[name], shadow), name
    loaded = open_clip.create_model("clip-tiny", pretrained=str(tmp_path / "export" / "model.pt"))
    assert torch.equal(loaded.text_projection, ema.shadow["clip.text_projection"])


def test_export_of_ema_refuses_a_checkpoint_without_one(tmp_path) -> None:
    checkpoint, _, _ = fake_checkpoint(tmp_path, with_ema=False)
    with pytest.raises(ckpt.CheckpointError, match="holds no EMA weights") as caught:
        ckpt.export(checkpoint, tmp_path / "export", ema=True)
    assert "\n" not in str(caught.value)


def test_zero3_is_refused_naming_ema_decay() -> None:
    with pytest.raises(ConfigError, match=r"^config key ema\.decay: .*ZeRO-3") as caught:
        load_config("pretrain/configs/smoke.yaml", ["ema.decay=0.9", "zero.stage=3"])
    assert "\n" not in str(caught.value)
    assert load_config("pretrain/configs/smoke.yaml", ["ema.decay=0", "zero.stage=3"]).ema.decay == 0
    assert load_config("pretrain/configs/smoke.yaml", ["ema.decay=0.9", "zero.stage=2"]).ema.enabled


@pytest.mark.parametrize("override,key", [("ema.decay=1", "ema.decay"), ("ema.decay=-0.1", "ema.decay"),
                                          ("ema.every_steps=0", "ema.every_steps")])
def test_config_errors_name_the_key(override, key) -> None:
    with pytest.raises(ConfigError, match=f"^config key {key}: "):
        load_config("pretrain/configs/smoke.yaml", [override])


EVAL_SCRIPT = """
import sys, torch
from safetensors.torch import load_file
from clip_pretrain.common.checkpoint_files import consolidated_state_dict
from clip_pretrain.pretrain.config import load_config
from clip_pretrain.pretrain.distributed import init_distributed
from clip_pretrain.pretrain.train import train
run_dir, shards, suite = sys.argv[1:4]
scored = []
def evaluate(engine, parts, cfg, dist, step):
    scored.append((step, engine.module.clip.text_projection.detach().clone()))
    return {}
cfg = load_config("pretrain/configs/smoke.yaml", [f"run_dir={run_dir}", f"data.train={shards}", "zero.stage=0",
                  "total_samples=48", "ema.decay=0.9", f"eval.suite={suite}", "eval.every_steps=3"])
train(cfg, init_distributed(), evaluate=evaluate)
assert [step for step, _ in scored] == [3, 6, 6], scored
at_3 = consolidated_state_dict(f"{run_dir}/checkpoints/step_00000003", ema=True)["text_projection"]
raw_3 = consolidated_state_dict(f"{run_dir}/checkpoints/step_00000003")["text_projection"]
final, raw = load_file(f"{run_dir}/export/model.safetensors"), load_file(f"{run_dir}/export-raw/model.safetensors")
assert torch.equal(scored[0][1], at_3) and not torch.equal(at_3, raw_3)
assert torch.equal(scored[-1][1], final["text_projection"]) and not torch.equal(final["text_projection"], raw["text_projection"])
print("EVAL_EMA_OK")
"""


@pytest.mark.slow
def test_training_time_evaluation_scores_the_ema_weights(demo_shards, tmp_path) -> None:
    """With EMA on, the evaluator sees the EMA weights (as saved at that step and as exported),
    in the loop and at the end (the swap back is test_frozen_weights_are_not_averaged_and_the_swap_restores)."""
    from tests.pretrain.runner import run_module

    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks: []\n")  # the stand-in evaluator above never reads it
    result = run_module(["-c", EVAL_SCRIPT, str(tmp_path / "run"), str(demo_shards), str(suite)])
    assert "EVAL_EMA_OK" in result.stdout, result.stdout[-2000:]
