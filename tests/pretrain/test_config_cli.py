"""The train CLI's config surface: --print-config, ${oc.env:...} in YAML values and overrides, and
--help listing every key with its default."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from clip_pretrain.pretrain import train
from clip_pretrain.pretrain.config import ConfigError, TrainConfig, load_config


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Nothing here may start a run (a broken --print-config would otherwise train for real)."""
    monkeypatch.setattr(train, "init_distributed", lambda: pytest.fail("--print-config started the run"))


def test_print_config_prints_the_resolved_yaml_and_starts_nothing(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code = train.main(["--config", "pretrain/configs/smoke.yaml", "optim.lr=1e-3", f"run_dir={run_dir}",
                       "--resume", "auto", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0
    assert printed["optim"]["lr"] == 1e-3 and printed["run_dir"] == str(run_dir)
    assert printed["checkpoint"]["resume"] == "auto" and printed["zero"]["stage"] == 2  # file + flags + defaults
    assert printed["logging"]["backends"] == ["jsonl", "wandb"]
    assert not run_dir.exists()


def test_print_config_still_refuses_a_bad_config(capsys):
    assert train.main(["--config", "pretrain/configs/smoke.yaml", "optim.lr=-1", "--print-config"]) == 2
    assert capsys.readouterr().err.startswith("error: config key optim.lr: ")


def test_env_interpolation_in_yaml_values_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    monkeypatch.setenv("MICRO", "24")
    monkeypatch.setenv("TRAIN_SHARDS", "/data/shards")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("run_dir: ${oc.env:SCRATCH}/runs/b32\n"
                      "micro_batch: ${oc.env:MICRO}\n"
                      "seed: ${oc.env:NOT_SET_ANYWHERE,7}\n"
                      "model:\n  compile: ${oc.env:NOT_SET_ANYWHERE, true}\n"
                      "data:\n  train:\n    - ${oc.env:TRAIN_SHARDS}\n    - extra\n")
    cfg = load_config(config, ["optim.lr=${oc.env:NOT_SET_ANYWHERE,2e-4}", "eval.batch_size=${oc.env:MICRO}"])
    assert cfg.run_dir == "/scratch/me/runs/b32"
    assert (cfg.micro_batch, cfg.seed, cfg.model.compile, cfg.optim.lr, cfg.eval.batch_size) == (24, 7, True, 2e-4, 24)
    assert cfg.data.train == ["/data/shards", "extra"]
    monkeypatch.setenv("TRAIN_SHARDS", "[&a [1, 2], *a, *a]")  # anchors and aliases from the environment stay text
    assert load_config(None, ["data.train=${oc.env:TRAIN_SHARDS}"]).data.train == "[&a [1, 2], *a, *a]"


@pytest.mark.parametrize("where,message", [
    ("file", r"^config key data\.train\[0\]: environment variable NOT_SET_ANYWHERE is not set; export it or give a "
             r"default as \$\{oc\.env:NOT_SET_ANYWHERE,DEFAULT\}$"),
    ("override", r"^config key optim\.lr: environment variable NOT_SET_ANYWHERE is not set; "),
])
def test_missing_env_variable_is_one_line_naming_the_key(where, message, monkeypatch, tmp_path):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train: ['${oc.env:NOT_SET_ANYWHERE}']\n" if where == "file" else "data:\n  train: x\n")
    with pytest.raises(ConfigError, match=message):
        load_config(config, ["optim.lr=${oc.env:NOT_SET_ANYWHERE}"] if where == "override" else [])


def test_secret_variables_and_other_interpolations_are_refused(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-value")
    with pytest.raises(ConfigError, match=r"^config key logging\.wandb_entity: \$\{oc\.env:WANDB_API_KEY\} looks like a secret"):
        load_config(None, ["data.train=x", "logging.wandb_entity=${oc.env:WANDB_API_KEY}"])
    with pytest.raises(ConfigError, match=r"^config key run_dir: \$\{foo\.bar\} is not an interpolation this loader knows"):
        load_config(None, ["data.train=x", "run_dir=runs/${foo.bar}"])


def dotted_keys(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, object]]:
    hints = typing.get_type_hints(cls)
    keys = []
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[item.name]):
            keys += dotted_keys(hints[item.name], f"{prefix}{item.name}.")
        else:
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            keys.append((f"{prefix}{item.name}", default))
    return keys


def test_help_lists_every_config_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--print-config" in text and "${oc.env:NAME,default}" in text
    listed = {line.split(" = ")[0].strip(): line.split(" = ", 1)[1] for line in text.splitlines() if " = " in line}
    keys = dotted_keys()
    assert len(keys) > 50 and set(listed) == {key for key, _ in keys}
    for key, default in keys:
        shown = listed[key].rsplit("  (", 1)[0]
        assert yaml.safe_load(shown) == default, (key, shown, default)
    assert listed["precision"].endswith("(fp32 | bf16 | fp16)")


def test_every_shipped_config_prints(capsys):
    for path in sorted(Path("pretrain/configs").glob("*.yaml")):
        assert train.main(["--config", str(path), "--print-config"]) == 0, path
        assert yaml.safe_load(capsys.readouterr().out)["run_dir"]
