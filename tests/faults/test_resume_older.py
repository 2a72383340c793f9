"""Resuming from an older checkpoint of the same run dir: the run must save its own final step
(today the save was skipped because `latest` already named that step, and the export came from the
abandoned run), and the checkpoints it replaces are kept aside, not overwritten in place."""

from __future__ import annotations

import pytest

from clip_pretrain.common.checkpoint_files import SUPERSEDED, latest_tag
from tests.faults.helpers import check, command, run

pytestmark = pytest.mark.slow


def test_resume_from_an_older_checkpoint_saves_and_exports_its_own_final_step(tmp_path, demo_shards):
    run_dir = tmp_path / "run"
    check(run(command(0, demo_shards, run_dir)))  # 12 steps, checkpoints at 6, 9, 12 kept
    checkpoints = run_dir / "checkpoints"
    old_final = (checkpoints / "step_00000012" / "mp_rank_00_model_states.pt").stat()
    old_export = (run_dir / "export" / "model.safetensors").stat()
    result = check(run(command(0, demo_shards, run_dir, f"checkpoint.resume={checkpoints / 'step_00000006'}")))
    assert "holds newer checkpoints (step_00000009, step_00000012)" in result.stderr
    assert latest_tag(checkpoints) == "step_00000012"
    new_final = (checkpoints / "step_00000012" / "mp_rank_00_model_states.pt").stat()
    assert new_final.st_ino != old_final.st_ino and new_final.st_mtime_ns > old_final.st_mtime_ns  # saved again
    assert (run_dir / "export" / "model.safetensors").stat().st_mtime_ns > old_export.st_mtime_ns
    aside = {p.name.split("-")[0]: p for p in (checkpoints / SUPERSEDED).iterdir()}
    assert sorted(aside) == ["step_00000009", "step_00000012"]
    assert (aside["step_00000012"] / "mp_rank_00_model_states.pt").stat().st_ino == old_final.st_ino  # kept, not lost
