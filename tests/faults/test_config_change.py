"""Resuming with a changed ZeRO stage or world size is refused with one clear line (DeepSpeed
cannot repartition its optimizer state), and the checkpoints are left byte-identical."""

from __future__ import annotations

import shutil

import pytest

from tests.faults.helpers import SMOKE, TORCHRUN, command, error_lines, fingerprint, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("nproc, override, expected", [
    (2, "zero.stage=3", "was written with zero.stage=2, this run has zero.stage=3"),
    (0, "zero.stage=2", "was written by 2 processes, this run has 1"),
])
def test_changed_resume_config_is_refused_untouched(nproc, override, expected, tmp_path, demo_shards, reference_run):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    before = fingerprint(run_dir / "checkpoints")
    cmd = [*TORCHRUN, f"--nproc_per_node={nproc}", "-m", "clip_pretrain.pretrain.train"] if nproc else None
    args = [*SMOKE, f"data.train={demo_shards}", f"run_dir={run_dir}", "total_samples=144", override, "--resume", "auto"]
    result = run(cmd + args if cmd else command(0, demo_shards, run_dir, *args[2:]), timeout=240)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert lines and all(expected in line and ("resume with" in line or "relaunch" in line) for line in lines), lines
    assert len(lines) == max(nproc, 1)  # one line per rank, nothing else
    assert "corrupt" not in result.stderr
    assert fingerprint(run_dir / "checkpoints") == before
