"""A run directory is owned by one trainer at a time: a second one is refused in one line before it
writes anything, and a lock left by a killed trainer does not block the next run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_pretrain.common.checkpoint_files import CheckpointError
from clip_pretrain.pretrain.config import load_config
from clip_pretrain.pretrain.distributed import DistContext
from clip_pretrain.pretrain.setup import RUN_LOCK, prepare_run_dir

ONE_PROCESS = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo",
                          launcher="none")
HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from clip_pretrain.pretrain.setup import prepare_run_dir
from clip_pretrain.pretrain.config import load_config
from tests.faults.test_run_dir_lock import ONE_PROCESS
prepare_run_dir(load_config("pretrain/configs/smoke.yaml", ["run_dir={run_dir}"]), ONE_PROCESS)
print("holding", flush=True)
time.sleep(600)
"""


def test_second_trainer_on_a_run_dir_is_refused_and_a_dead_holder_does_not_block(tmp_path):
    repo = str(Path(__file__).resolve().parents[2])
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=repo, run_dir=run_dir)], cwd=repo,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        first_config = (run_dir / "config.yaml").read_text()
        second = load_config("pretrain/configs/smoke.yaml", [f"run_dir={run_dir}", "seed=7"])
        with pytest.raises(CheckpointError) as info:
            prepare_run_dir(second, ONE_PROCESS)
        message = str(info.value)
        assert "\n" not in message and f"run_dir {run_dir} is in use by another trainer (pid {holder.pid}" in message
        assert (run_dir / "config.yaml").read_text() == first_config  # the running trainer's config is untouched
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (run_dir / RUN_LOCK).is_file()  # the dead holder's lock file stays; the OS released its lock
    prepare_run_dir(second, ONE_PROCESS)
    assert "seed: 7" in (run_dir / "config.yaml").read_text()
