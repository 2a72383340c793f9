"""Training faults: bad config, preemption signals, non-finite losses, incompatible or corrupt
checkpoints. Each ends with one clear error line (or a clean exit) and no checkpoint is modified."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip_pretrain.common.checkpoint_files import COMPLETE, LATEST, latest_tag
from tests.pretrain.runner import REPO, read_metrics, run_module

pytestmark = pytest.mark.slow
SMOKE = ["--config", "pretrain/configs/smoke.yaml"]


def train(run_dir: Path, shards: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_module(["-m", "clip_pretrain.pretrain.train", *SMOKE, f"data.train={shards}", f"run_dir={run_dir}", *extra], check=check)


def fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_bad_config_is_one_line_before_any_work(tmp_path):
    for args, expected in [
        (["--config", str(tmp_path / "missing.yaml")], "config file not found"),
        ([*SMOKE, "optim.lr=-1"], "config key optim.lr"),
        ([*SMOKE, "zero.stage=7"], "config key zero.stage"),
        ([*SMOKE, "micro_batch=0"], "config key micro_batch"),
        ([*SMOKE, "optim.betas=1"], "config key optim.betas: unknown key"),
    ]:
        result = run_module(["-m", "clip_pretrain.pretrain.train", *args], check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        assert expected in error_line(result)


def test_missing_shards_fail_clearly(tmp_path, demo_shards):
    result = train(tmp_path / "r", tmp_path / "no-such-shards", check=False)
    assert result.returncode == 1 and "no-such-shards" in error_line(result)


def test_incompatible_and_corrupt_checkpoints_are_refused_untouched(tmp_path, demo_shards):
    run_dir = tmp_path / "run"
    train(run_dir, demo_shards, "total_samples=24")  # 3 steps, checkpoint at step 3
    before = fingerprint(run_dir / "checkpoints")

    # A different model (MLM head added) cannot take these weights.
    result = train(run_dir, demo_shards, "total_samples=48", "loss.mlm_weight=0.5", "--resume", "auto", check=False)
    assert result.returncode == 1
    assert "different model" in error_line(result)
    assert fingerprint(run_dir / "checkpoints") == before

    # A corrupt weights file in the latest checkpoint: refused, nothing rewritten.
    states = run_dir / "checkpoints" / latest_tag(run_dir / "checkpoints") / "mp_rank_00_model_states.pt"
    states.write_bytes(b"not a checkpoint")
    before = fingerprint(run_dir / "checkpoints")
    result = train(run_dir, demo_shards, "total_samples=48", "--resume", "auto", check=False)
    assert result.returncode == 1
    line = error_line(result)
    assert "cannot read checkpoint" in line and latest_tag(run_dir / "checkpoints") in line and "corrupt" in line, line
    assert fingerprint(run_dir / "checkpoints") == before


def test_malicious_pickle_in_checkpoint_is_refused(tmp_path, demo_shards):
    run_dir = tmp_path / "run"
    train(run_dir, demo_shards, "total_samples=24")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    states = run_dir / "checkpoints" / latest_tag(run_dir / "checkpoints") / "mp_rank_00_model_states.pt"
    original = torch.load(states, weights_only=True)
    torch.save({**original, "evil": Payload()}, states)
    result = train(run_dir, demo_shards, "total_samples=48", "--resume", "auto", check=False)
    assert result.returncode == 1 and "refusing to load" in error_line(result)
    assert not marker.exists()
    from clip_pretrain.common.checkpoint_files import CheckpointError, consolidated_state_dict

    with pytest.raises(CheckpointError, match="refusing to load"):
        consolidated_state_dict(run_dir)
    assert not marker.exists()


def test_nonfinite_losses_stop_with_intact_checkpoint(tmp_path, demo_shards):
    run_dir = tmp_path / "run"
    result = train(run_dir, demo_shards, "optim.lr=1e30", "optim.grad_clip=0", "checkpoint.every_steps=1", "max_nonfinite_steps=3", check=False)
    assert result.returncode == 1
    assert "consecutive non-finite losses" in error_line(result)
    tag = latest_tag(run_dir / "checkpoints")
    assert tag is not None and (run_dir / "checkpoints" / tag / COMPLETE).is_file()


def test_preemption_signal_saves_and_requeued_run_resumes(tmp_path, demo_shards):
    """SIGUSR1 to torchrun (as launch/slurm/pretrain.sbatch forwards it): workers save and exit;
    a rerun with --resume auto continues the step count."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        "-m", "clip_pretrain.pretrain.train", *SMOKE, f"data.train={demo_shards}", f"run_dir={run_dir}",
        "total_samples=100000", "checkpoint.every_steps=0",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 2:
            break
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("training did not start in time")
    signalled = time.time()
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=120)
    assert time.time() - signalled < 60, "saving on preemption took too long"
    tag = latest_tag(run_dir / "checkpoints")
    assert tag is not None, output[-3000:]
    saved_step = int(tag.split("_")[1])
    assert saved_step >= 2 and "preemption signal" in output

    torchrun_args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clip_pretrain.pretrain.train"]
    run_module([*torchrun_args, *SMOKE, f"data.train={demo_shards}", f"run_dir={run_dir}",
                f"total_samples={16 * (saved_step + 2)}", "checkpoint.every_steps=0", "--resume", "auto"])
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps[-2:] == [saved_step + 1, saved_step + 2]
    assert (run_dir / "checkpoints" / LATEST).read_text() == f"step_{saved_step + 2:08d}"


@pytest.mark.parametrize("stage", [0, 2])
def test_nonfinite_updates_are_skipped_not_applied(stage, tmp_path, demo_shards):
    """After lr=1e30 blows the activations up, every later update is skipped (at ZeRO 0 on the
    device through fused AdamW's found_inf, at ZeRO 2 by DeepSpeed), so the weights in the last
    checkpoint stay finite and the run stops after max_nonfinite_steps skips in a row."""
    import torch

    from clip_pretrain.common.checkpoint_files import consolidated_state_dict

    run_dir = tmp_path / "run"
    result = train(run_dir, demo_shards, "optim.lr=1e30", "optim.grad_clip=0", "checkpoint.every_steps=1",
                   "max_nonfinite_steps=3", f"zero.stage={stage}", check=False)
    assert result.returncode == 1
    assert "3 consecutive non-finite losses or gradients" in error_line(result)
    skipped = [m["nonfinite_steps"] for m in read_metrics(run_dir)]
    assert skipped[-1] >= 2 and skipped == sorted(skipped), skipped
    weights = consolidated_state_dict(run_dir)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
