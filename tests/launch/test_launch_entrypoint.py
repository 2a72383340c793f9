"""clip_pretrain.launch.entrypoint: the Docker image's subcommand dispatch, tested as a pure function."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clip_pretrain.launch.entrypoint import USAGE, command_for

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHON": "python", "APP_DIR": "/opt/clip"}


def test_pretrain_goes_through_torchrun_by_default() -> None:
    argv = ["pretrain", "pretrain/configs/base.yaml", "optim.lr=1e-4", "checkpoint.resume=auto"]
    assert command_for(argv, ENV) == [
        "bash", "/opt/clip/launch/torchrun.sh", "pretrain/configs/base.yaml", "optim.lr=1e-4",
        "checkpoint.resume=auto",
    ]


def test_pretrain_runs_one_rank_directly_under_an_outer_launcher() -> None:
    environ = {**ENV, "RANK": "3", "WORLD_SIZE": "8"}
    assert command_for(["pretrain", "c.yaml", "a=1"], environ) == [
        "python", "-m", "clip_pretrain.pretrain.train", "--config", "c.yaml", "a=1",
    ]
    forced = command_for(["pretrain", "c.yaml"], {**ENV, "PRETRAIN_LAUNCHER": "python"})
    assert forced[:3] == ["python", "-m", "clip_pretrain.pretrain.train"]


def test_default_app_dir_is_this_checkout() -> None:
    assert command_for(["pretrain", "c.yaml"], {})[1] == str(REPO / "launch" / "torchrun.sh")


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["eval", "--checkpoint", "runs/x", "--suite", "s.yaml"], "clip_pretrain.eval.run"),
        (["eval", "run", "--checkpoint", "runs/x"], "clip_pretrain.eval.run"),
        (["eval", "zeroshot", "--checkpoint", "runs/x"], "clip_pretrain.eval.zeroshot"),
        (["eval", "retrieval", "--checkpoint", "runs/x"], "clip_pretrain.eval.retrieval"),
        (["data", "--source", "x.jsonl"], "clip_pretrain.data.build"),
        (["data", "build", "--source", "x.jsonl"], "clip_pretrain.data.build"),
        (["data", "demo", "--out", "d"], "clip_pretrain.data.demo"),
        (["demo", "--out", "d"], "clip_pretrain.data.demo"),
    ],
)
def test_python_tools(argv: list[str], module: str) -> None:
    command = command_for(argv, {"PYTHON": "/opt/conda/bin/python"})
    assert command[:3] == ["/opt/conda/bin/python", "-m", module]
    assert command[3:] == [a for a in argv[1:] if a not in ("run", "zeroshot", "retrieval", "build", "demo")]


def test_shell_and_exec() -> None:
    assert command_for(["shell"], ENV) == ["bash"]
    assert command_for(["shell", "-c", "nvidia-smi"], ENV) == ["bash", "-c", "nvidia-smi"]
    assert command_for(["exec", "nvidia-smi", "-L"], ENV) == ["nvidia-smi", "-L"]


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        ([], "no subcommand"),
        (["train"], "unknown subcommand 'train'"),
        (["pretrain"], "pretrain needs a config"),
        (["pretrain", "optim.lr=1"], "pretrain needs a config"),
        (["exec"], "exec needs a command"),
    ],
)
def test_bad_argv_is_a_one_line_usage_error(argv: list[str], start: str) -> None:
    with pytest.raises(ValueError) as err:
        command_for(argv, ENV)
    assert str(err.value).startswith(start) and USAGE in str(err.value) and "\n" not in str(err.value)


def test_unknown_launcher_is_rejected() -> None:
    with pytest.raises(ValueError, match="^PRETRAIN_LAUNCHER:"):
        command_for(["pretrain", "c.yaml"], {"PRETRAIN_LAUNCHER": "mpirun"})


def run_entrypoint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "APP_DIR": str(REPO)}
    return subprocess.run(["bash", str(REPO / "docker" / "entrypoint.sh"), *args], env=env,
                          capture_output=True, text=True, check=False, timeout=60)


def test_shell_entrypoint_execs_the_dispatched_command() -> None:
    done = run_entrypoint("exec", "echo", "hello")
    assert (done.returncode, done.stdout) == (0, "hello\n")
    usage = run_entrypoint("--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage:")
    bad = run_entrypoint("frobnicate")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown subcommand") and bad.stderr.count("\n") == 1
