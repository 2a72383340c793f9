"""Config loading: YAML + dotted overrides, type checks, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clip_pretrain.pretrain.config import ConfigError, TrainConfig, dump_config, load_config
from clip_pretrain.pretrain.engine import deepspeed_config, lr_lambda

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "pretrain" / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: shards/\n" + text)
    return path


def load(*overrides: str) -> TrainConfig:
    return load_config(None, ["data.train=shards/", *overrides])


def test_every_shipped_config_loads():
    assert CONFIGS, "no shipped configs found"
    for path in CONFIGS:
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig)


def test_overrides_and_yaml_number_quirks(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1e-4\nmicro_batch: 8\n"), ["zero.stage=3", "optim.weight_decay=0.1", "seed=7"])
    assert cfg.optim.lr == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string: must still be a float
    assert cfg.zero.stage == 3 and cfg.optim.weight_decay == 0.1 and cfg.seed == 7 and cfg.micro_batch == 8


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optim.lr=-1"], "optim.lr"),
        (["optim.lr=0"], "optim.lr"),
        (["micro_batch=0"], "micro_batch"),
        (["total_samples=-5"], "total_samples"),
        (["zero.stage=4"], "zero.stage"),
        (["zero.offload_params=true", "zero.stage=2"], "zero.offload_params"),
        (["optim.lrr=1"], "optim.lrr"),
        (["nonsense=1"], "nonsense"),
        (["micro_batch=abc"], "micro_batch"),
        (["precision=fp8"], "precision"),
        (["data.train="], "data.train"),
        (["data.workers=-1"], "data.workers"),
        (["checkpoint.keep_last=0"], "checkpoint.keep_last"),
        (["eval.suite=/no/such/suite.yaml"], "eval.suite"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load(*overrides)
    message = str(info.value)
    assert "\n" not in message
    assert f"config key {key}:" in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "optim: [unclosed\n"))
    with pytest.raises(ConfigError, match="config key data.train:"):
        load_config(None)
    with pytest.raises(ConfigError, match="not key=value"):
        load("optim.lr")


def test_dump_round_trips(tmp_path):
    cfg = load("optim.lr=0.001", "zero.stage=1")
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["optim"]["lr"] == 0.001


def test_deepspeed_config_follows_our_config():
    cfg = load("micro_batch=4", "grad_accum=3", "zero.stage=3", "precision=bf16", "optim.grad_clip=0.5")
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 24 == cfg.global_batch(2)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    # Precision through autocast only: DeepSpeed's bf16/fp16 sections would cast the weights.
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bf16", "lower_precision_safe_modules": []}
    assert "bf16" not in ds and "fp16" not in ds
    assert ds["timers"]["throughput"]["enabled"] is False
    # At stage 0 the train step clips (on the device); DeepSpeed must not clip a second time.
    assert deepspeed_config(load("zero.stage=0", "optim.grad_clip=0.5"), world_size=2)["gradient_clipping"] == 0
    assert "torch_autocast" not in deepspeed_config(load("precision=fp32"), world_size=1)


def test_fp16_with_zero_clipping_is_refused():
    with pytest.raises(ConfigError, match="config key precision: fp16 with zero.stage >= 1"):
        load("precision=fp16", "zero.stage=2", "optim.grad_clip=1.0")
    load("precision=fp16", "zero.stage=2", "optim.grad_clip=0")
    load("precision=fp16", "zero.stage=0", "optim.grad_clip=1.0")


def test_lr_schedule_warmup_then_cosine():
    cfg = load("micro_batch=10", "total_samples=1000", "optim.warmup_samples=200", "optim.min_lr_ratio=0.1")
    schedule = lr_lambda(cfg, world_size=1)  # 100 steps, 20 of warmup
    assert schedule(0) == pytest.approx(1 / 20)
    assert schedule(19) == pytest.approx(1.0)
    assert schedule(20) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(100) == pytest.approx(0.1)
    values = [schedule(s) for s in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
