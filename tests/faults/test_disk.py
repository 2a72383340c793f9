"""Unwritable or full disks: a clear one-line error before training, or at save time with the
previous checkpoint still `latest`, loadable, and no partial checkpoint marked complete."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from clip_pretrain.common.checkpoint_files import COMPLETE, LATEST, CheckpointError, consolidated_state_dict, latest_tag
from clip_pretrain.pretrain.config import load_config
from clip_pretrain.pretrain.distributed import DistContext
from clip_pretrain.pretrain.setup import prepare_run_dir
from tests.faults.helpers import command, error_lines, run

pytestmark = pytest.mark.slow
ONE_PROCESS = DistContext(rank=0, world_size=1, local_rank=0, device=__import__("torch").device("cpu"),
                          backend="gloo", launcher="none")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KiB tmpfs (root only): smaller than the 1 MiB write probe of prepare_run_dir."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def config_for(run_dir: Path, shards: Path):
    return load_config("pretrain/configs/smoke.yaml", [f"run_dir={run_dir}", f"data.train={shards}"])


@pytest.mark.parametrize("where", ["under_a_file", "under_proc", "full_tmpfs"])
def test_unwritable_run_dir_is_refused_in_process(where, tmp_path, demo_shards, request):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        run_dir, reason = tmp_path / "a_file" / "run", "Not a directory"
    elif where == "under_proc":  # root ignores chmod 555; /proc refuses even root
        run_dir, reason = Path("/proc/faults-test-run"), "(No such file|Permission denied|Operation not permitted)"
    else:
        run_dir, reason = request.getfixturevalue("tiny_tmpfs") / "run", "disk full"
    with pytest.raises(CheckpointError, match=rf"run_dir {re.escape(str(run_dir))} is not writable \({reason}") as info:
        prepare_run_dir(config_for(run_dir, demo_shards), ONE_PROCESS)
    assert "\n" not in str(info.value)


def test_unwritable_run_dir_cli_fails_before_training(tmp_path, demo_shards):
    (tmp_path / "a_file").write_text("x")
    result = run(command(0, demo_shards, tmp_path / "a_file" / "run"), timeout=180)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert "is not writable" in line and "choose another run_dir" in line
    assert "Traceback" not in result.stderr


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, demo_shards):
    """The wrapper lets DeepSpeed write step 6, then raises ENOSPC as a full disk would mid-save."""
    run_dir = tmp_path / "run"
    result = run(command(0, demo_shards, run_dir, "total_samples=48"), FAULT_SAVE_ENOSPC_TAG="step_00000006")
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = error_lines(result.stderr)
    assert "could not save checkpoint" in line and "No space left on device" in line
    assert "previous checkpoint (step_00000003) is intact" in line
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / LATEST).read_text() == "step_00000003" == latest_tag(checkpoints)
    assert not (checkpoints / "step_00000006").exists()  # the partial save was removed, never marked complete
    assert [p.name for p in checkpoints.glob("step_*/" + COMPLETE)] == [COMPLETE]
    assert consolidated_state_dict(run_dir)
