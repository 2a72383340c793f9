"""Configs that are hostile or absurd: each stops with one `config ...` line before any work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clip_pretrain.pretrain.config import ConfigError, load_config
from clip_pretrain.pretrain.train import main

BASE = "data:\n  train: shards/\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    (ALIAS_BOMB + "data:\n  train: *i\n", "expands to more than"),  # a list of 10^9 shard specs
    (BASE + "model: &m {name: *m}\n", "found unconstructable recursive node"),  # refers to itself
    (BASE + "optim:\n  lr: 1.0e-3\noptim:\n  lr: 1.0e-1\n", "key 'optim' given twice with different values"),
    (BASE + "seed: 1\nseed: 2\n", "key 'seed' given twice with different values (lines 3 and 4)"),
    (BASE + "optim:\n  weight_decay: .inf\n", "config key optim.weight_decay: must be a finite number, got inf"),
    (BASE + "optim:\n  eps: .inf\n", "config key optim.eps: must be a finite number, got inf"),
    (BASE + "seed: 18446744073709551617\n", "config key seed: 18446744073709551617 does not fit"),
])
def test_hostile_config_files_are_refused_in_one_line(text, expected, tmp_path):
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=[", "override 'optim.lr=[' is not valid YAML"),
    ("optim.lr={a: 1, a: 2}", "given twice"),
    ("optim.eps=inf", "config key optim.eps: must be a finite number"),
    ("optim.grad_clip=inf", "config key optim.grad_clip: must be a finite number"),
    ("seed=99999999999999999999", "does not fit in a signed 64-bit integer"),
    ("optim..lr=1", "empty part in the dotted key"),
])
def test_hostile_overrides_are_refused_in_one_line(override, expected, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), [override])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_repeated_keys_that_agree_and_empty_sections_still_load(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "seed: 3\nseed: 3\nmodel:\n"), ["model.name=clip-tiny"])
    assert cfg.seed == 3 and cfg.model.name == "clip-tiny"


def test_huge_or_undecodable_config_files_are_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"bytes, more than a config needs"):
        load_config(path)
    path.write_bytes(BASE.encode() + b"run_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text"):
        load_config(path)  # today: a UnicodeDecodeError traceback


def test_cli_prints_one_line_for_an_invalid_override(tmp_path, capsys):
    assert main(["--config", str(write(tmp_path, BASE)), "optim.lr=[1,"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override") and err.count("\n") == 1
