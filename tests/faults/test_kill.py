"""kill -9 during training: of the whole job, of one rank, and in the middle of a checkpoint save.
Nothing complete is lost: `--resume auto` continues from the last COMPLETE checkpoint, exactly."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from clip_pretrain.common.checkpoint_files import COMPLETE, LATEST, consolidated_state_dict, latest_tag
from tests.faults.helpers import (alive, check, command, kill_group, logged_steps, metrics_after, process_tree, run,
                                  start, wait_for)
from tests.pretrain.runner import read_metrics

pytestmark = pytest.mark.slow
SLOW_STEPS = {"FAULT_STEP_SLEEP": "1.5"}  # numerics unchanged; leaves time to kill between steps 4 and 6


def past_first_checkpoint(run_dir: Path):
    """Step-3 checkpoint complete and step 4 logged: the job is inside step 5."""
    return lambda: latest_tag(run_dir / "checkpoints") == "step_00000003" and 4 in logged_steps(run_dir)


def assert_resumes_exactly(run_dir: Path, shards: Path, reference: Path) -> None:
    """`--resume auto` redoes steps 4-6 from the step-3 checkpoint with the reference run's losses and
    sample counts (step s has seen 16*s samples: nothing skipped or fed twice)."""
    assert latest_tag(run_dir / "checkpoints") == "step_00000003"
    before = len(read_metrics(run_dir))
    result = check(run(command(2, shards, run_dir, "--resume", "auto")))
    assert "resuming from" in result.stdout + result.stderr
    resumed = metrics_after(run_dir, before)
    expected = {m["step"]: m for m in read_metrics(reference)}
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for m in resumed:
        assert m["loss"] == pytest.approx(expected[m["step"]]["loss"], abs=1e-5), (m["step"], m["loss"])
        assert m["samples_seen"] == expected[m["step"]]["samples_seen"] == 16 * m["step"]
    assert (run_dir / "checkpoints" / LATEST).read_text() == "step_00000006"


def test_kill9_whole_job_mid_step_resumes_exactly(tmp_path, demo_shards, reference_run):
    run_dir = tmp_path / "run"
    process = start(command(2, demo_shards, run_dir), tmp_path / "log", **SLOW_STEPS)
    try:
        wait_for(past_first_checkpoint(run_dir), process, tmp_path / "log")
    finally:
        kill_group(process)
    assert process.returncode == -9
    time.sleep(3)  # two more slow steps' time: nothing of the job may still be training
    assert 6 not in logged_steps(run_dir) and 5 >= max(logged_steps(run_dir))  # really killed mid-run
    assert_resumes_exactly(run_dir, demo_shards, reference_run)


def test_kill9_one_rank_tears_the_job_down_then_resumes(tmp_path, demo_shards, reference_run):
    run_dir = tmp_path / "run"
    process = start(command(2, demo_shards, run_dir), tmp_path / "log", **SLOW_STEPS)
    try:
        wait_for(past_first_checkpoint(run_dir), process, tmp_path / "log")
        workers = {int(p.environ().get("LOCAL_RANK", -1)): p for p in psutil.Process(process.pid).children()}
        assert set(workers) >= {0, 1}, workers
        tree = process_tree(process.pid)
        workers[1].kill()
        killed = time.time()
        process.wait(timeout=120)  # bounded: torchrun must notice and stop rank 0, not hang in a collective
        torn_down_s = time.time() - killed
        deadline = time.time() + 60
        while alive(tree) and time.time() < deadline:
            time.sleep(0.5)
        survivors = alive(tree)
    finally:
        kill_group(process)
    assert process.returncode not in (0, None), process.returncode
    assert not survivors, f"processes of the killed job were left running: {survivors}"
    assert torn_down_s < 120
    assert 6 not in logged_steps(run_dir)
    assert_resumes_exactly(run_dir, demo_shards, reference_run)


def test_kill9_mid_save_keeps_previous_checkpoint(tmp_path, demo_shards):
    """One process; the wrapper pauses after DeepSpeed wrote step 6 but before COMPLETE and `latest`."""
    run_dir = tmp_path / "run"
    window = run_dir / "checkpoints" / "IN_SAVE_WINDOW"
    process = start(command(0, demo_shards, run_dir, "total_samples=48"), tmp_path / "log",
                    FAULT_SAVE_SLEEP_TAG="step_00000006")
    try:
        wait_for(window.is_file, process, tmp_path / "log")
    finally:
        kill_group(process)
    checkpoints = run_dir / "checkpoints"
    partial = checkpoints / "step_00000006"
    assert any(partial.glob("*model_states.pt")) and not (partial / COMPLETE).exists()  # killed inside the save
    assert (checkpoints / LATEST).read_text() == "step_00000003"
    assert latest_tag(checkpoints) == "step_00000003"
    weights = consolidated_state_dict(run_dir)  # the previous checkpoint loads
    assert weights and all(t.isfinite().all() for t in weights.values())

    window.unlink()
    before = len(read_metrics(run_dir))
    result = check(run(command(0, demo_shards, run_dir, "total_samples=64", "--resume", "auto")))
    assert "resuming from" in result.stdout + result.stderr and "step_00000003" in result.stdout + result.stderr
    assert [m["step"] for m in metrics_after(run_dir, before)] == [4, 5, 6, 7, 8]
    assert [m["samples_seen"] for m in metrics_after(run_dir, before)] == [32, 40, 48, 56, 64]
    assert (checkpoints / "step_00000006" / COMPLETE).is_file()  # the torn one was replaced by a full save
    assert latest_tag(checkpoints) == "step_00000008"
