"""The project installs as one package, clip_pretrain, with a console script for every CLI (issue #16).

The wheel is built from a copy of the checkout and installed into a bare folder; each script then
runs from another directory with only that folder on the path, so nothing is found through the
repository root."""
from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CARD_PACKAGES = ("common", "data", "eval", "launch", "pretrain")
NOT_SOURCES = (".git", ".venv", "runs", "demo_out", "build", "wandb", "__pycache__", "*.egg-info", ".whl")


def python_files() -> list[Path]:
    folders = [*CARD_PACKAGES, "clip_pretrain", "tests", "benchmarks"]
    return [path for folder in folders for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts]


def test_every_import_of_the_card_packages_is_qualified():
    """A bare `import data...` would work in the checkout (the root is on sys.path) and break installed."""
    bare = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bare += [f"{path.relative_to(REPO)}:{node.lineno} {name}" for name in names
                     if name.split(".")[0] in CARD_PACKAGES]
    assert not bare, f"import these as clip_pretrain.<package>: {bare}"


def cli_modules() -> set[str]:
    """Product modules runnable with `python -m` (they have a __main__ block)."""
    return {f"clip_pretrain.{path.parent.name}.{path.stem}" for package in CARD_PACKAGES
            for path in (REPO / package).glob("*.py") if 'if __name__ == "__main__":' in path.read_text()}


def module_of(entry_point: str) -> str:
    """The `python -m` module a console script runs (eval's scripts go through eval.cli's wrappers)."""
    module, attr = entry_point.split(":")
    if module == "clip_pretrain.eval.cli":
        from clip_pretrain.eval import cli

        return getattr(cli, attr).__doc__.split("python -m ")[1].split()[0]
    return module


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(install folder, console script -> entry point) of a wheel built from a copy of the checkout."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(root / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("clip_pretrain-*.whl")
    target = root / "site"
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    with zipfile.ZipFile(wheel) as archive:
        info = next(name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(info).decode())
        top_level = archive.read(info.replace("entry_points.txt", "top_level.txt")).decode().split()
    assert top_level == ["clip_pretrain"]  # no top-level `data` / `eval` to collide with other projects
    return target, dict(parser["console_scripts"])


def run_elsewhere(target: Path, cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "DS_ACCELERATOR": "cpu"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_every_cli_has_a_console_script(installed):
    _, scripts = installed
    assert {module_of(entry) for entry in scripts.values()} >= cli_modules()


@pytest.mark.slow
def test_installed_console_scripts_run_from_another_directory(installed, tmp_path):
    target, scripts = installed
    where = run_elsewhere(target, tmp_path, sys.executable, "-c",
                          "import clip_pretrain.data.loader as m, clip_pretrain.pretrain.model as p; "
                          "print(m.__file__); print(p.CONFIG_DIR)")
    assert where.returncode == 0, where.stderr[-2000:]
    loader_file, config_dir = where.stdout.split()
    assert Path(loader_file).is_relative_to(target) and (Path(config_dir) / "clip-tiny.json").is_file()
    for script in sorted(scripts):
        result = run_elsewhere(target, tmp_path, str(target / "bin" / script), "--help")
        assert result.returncode == 0, f"{script} --help: {result.stderr[-2000:]}"
        assert result.stdout.startswith("usage:"), f"{script} --help printed {result.stdout[:200]!r}"
        assert script in result.stdout.splitlines()[0] or script == "clip", result.stdout.splitlines()[0]
