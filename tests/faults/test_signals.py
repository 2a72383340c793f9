"""SIGINT behaves like SIGTERM (checkpoint, exit), also when only the launcher gets it, and a signal
during the final save lets the save finish instead of killing it half-way."""

from __future__ import annotations

import os
import signal

import pytest

from clip_pretrain.pretrain import train
from clip_pretrain.common.checkpoint_files import COMPLETE, latest_tag
from tests.faults.helpers import command, kill_group, logged_steps, start, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")])
def test_signal_to_torchrun_only_checkpoints_and_exits(sig, tmp_path, demo_shards):
    """Ctrl-C reaches torchrun alone (its workers run in sessions of their own); it forwards the
    signal. Today SIGINT made every worker die in a KeyboardInterrupt traceback without a save."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    process = start(command(2, demo_shards, run_dir), log, FAULT_STEP_SLEEP="1.5")
    try:
        wait_for(lambda: 4 in logged_steps(run_dir), process, log)
        os.kill(process.pid, sig)  # torchrun only, not its process group
        process.wait(timeout=120)
    finally:
        kill_group(process)
    text = log.read_text()
    saved = latest_tag(run_dir / "checkpoints")
    assert saved is not None and int(saved.split("_")[1]) >= 4, text[-3000:]
    assert f"preemption signal: saved step {int(saved.split('_')[1])}" in text
    assert "KeyboardInterrupt" not in text
    # The only traceback allowed is torchrun's own report of the signal it received.
    assert text.count("Traceback") == text.count("elastic.multiprocessing.api.SignalException: Process")


def test_sigterm_during_the_final_save_finishes_it(tmp_path, demo_shards):
    """One process, 12 steps: SIGTERM arrives while DeepSpeed writes step 12. Today the loop had
    already restored the default handler, so the process died mid-save (exit -15, no step 12)."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    window = run_dir / "checkpoints" / "IN_SAVE_WINDOW"
    process = start(command(0, demo_shards, run_dir), log, FAULT_SAVE_PAUSE_TAG="step_00000012")
    try:
        wait_for(window.is_file, process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        kill_group(process)
    assert latest_tag(run_dir / "checkpoints") == "step_00000012"
    assert (run_dir / "checkpoints" / "step_00000012" / COMPLETE).is_file()
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert logged_steps(run_dir)[-1] == 12


def test_second_sigint_interrupts_at_once():
    with train.preemption_signals() as preempted:
        train._received.clear()
        signal.raise_signal(signal.SIGINT)
        assert preempted()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    train._received.clear()
