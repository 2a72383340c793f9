"""launch/slurm/pretrain.sbatch and eval.sbatch with the real training on a one-node SLURM cluster: the smoke
config as 2 gloo processes on CPU, SIGUSR1 -> checkpoint -> requeue -> exact resume, then evaluation.

One module-scoped flow runs the jobs once (each launch costs ~15-40 s of start-up); the tests check its parts.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CONFIG = "pretrain/configs/smoke.yaml"
BATCH = 16  # smoke: micro batch 8 x 2 processes
EXTRA_STEPS = 3  # steps the requeued job trains past the preemption checkpoint
# Constant lr (no warmup, cosine down to 1.0 x lr): the requeued job gets a smaller total_samples than the
# first one, and the schedule must not depend on it for the resumed losses to match the reference run.
# every_steps=0: the only checkpoint before the end is the one the signal asks for.
SETTINGS = ("optim.warmup_samples=0", "optim.min_lr_ratio=1.0", "checkpoint.every_steps=0")
JOB_TIMEOUT = 300  # seconds per job; a loaded 2-core machine needs ~60 s per launch

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class PreemptedRun:
    job: str
    run_dir: Path
    log: str  # both runs of the job: --open-mode=append
    saved_step: int  # the step the SIGUSR1 checkpoint holds
    latest_after_signal: str  # RUN/checkpoints/latest as the first run left it
    steps_before_requeue: list[int]  # the steps in RUN/metrics.jsonl when the first run had ended
    reference_dir: Path  # the same config trained without interruption to the same final step


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Metric records, without the resume marker lines the requeued run writes."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [record for record in records if "event" not in record]


def restart_segment(log: str, job: str, restart: int) -> str:
    """The part of the appended job log written by run `restart` (0 = first) of the job."""
    start = log.index(f"job {job} (restart {restart})")
    end = log.find(f"job {job} (restart {restart + 1})", start)
    return log[start:] if end < 0 else log[start:end]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slurm-shards") / "shards"
    done = subprocess.run([sys.executable, "-m", "clip_pretrain.data.demo", "--output", str(out), "--num-train", "320",
                           "--num-val", "96", "--shard-size", "40"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def train_cluster(slurm_cluster: Any) -> Any:
    return slurm_cluster.with_env({"PYTHON": sys.executable, "NPROC_PER_NODE": "2"})


@pytest.fixture(scope="module")
def preempted(train_cluster: Any, shards: Path, tmp_path_factory: pytest.TempPathFactory) -> PreemptedRun:
    """Submits a long run, sends what SLURM sends before a time limit, lets the job requeue and finish a few
    steps later (via OVERRIDES_FILE, the only setting a requeued job can change), then runs the reference."""
    tmp = tmp_path_factory.mktemp("slurm-train")
    run_dir, overrides = tmp / "run", tmp / "overrides.txt"
    overrides.write_text("# read by pretrain.sbatch at every start of the job\n")
    cluster = train_cluster.with_env({"OVERRIDES_FILE": str(overrides)})
    job = cluster.submit(f"--output={tmp}/%x-%j.out", "launch/slurm/pretrain.sbatch", CONFIG,
                         f"data.train={shards}", f"run_dir={run_dir}", "total_samples=100000", *SETTINGS)
    log = tmp / f"clip-pretrain-{job}.out"
    latest = run_dir / "checkpoints" / "latest"
    try:
        cluster.wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= 2,
                           JOB_TIMEOUT, "2 logged training steps", log)
        # What SLURM does 120 s before the time limit (#SBATCH --signal=B:USR1@120).
        signalled = cluster.run("scancel", "--signal=USR1", "--batch", job)
        assert signalled.returncode == 0, signalled.stderr
        cluster.wait_until(latest.exists, 120, "the preemption checkpoint", log)
        latest_after_signal = latest.read_text().strip()
        saved_step = int(latest_after_signal.removeprefix("step_"))
        # The requeued job starts >= cred_expire (10 s) after this one ends, and reads the file then.
        staged = overrides.with_suffix(".new")
        staged.write_text(f"total_samples={(saved_step + EXTRA_STEPS) * BATCH}\n")
        staged.replace(overrides)
        cluster.wait_until(lambda: cluster.job_field(job, "Restarts") == "1", 120, "the job to requeue itself", log)
        steps_before_requeue = [m["step"] for m in read_metrics(run_dir)]  # the requeued run needs > 10 s to log
        assert cluster.wait_for_job(job, JOB_TIMEOUT, log) == "COMPLETED", log.read_text()[-4000:]
    finally:
        cluster.run("scancel", job)
    exit_code = cluster.job_field(job, "ExitCode")
    assert exit_code == "0:0", f"requeued job exit code {exit_code}\n{log.read_text()[-4000:]}"

    reference_dir = tmp / "reference"
    ref_job = train_cluster.submit(f"--output={tmp}/reference-%j.out", "launch/slurm/pretrain.sbatch", CONFIG,
                                   f"data.train={shards}", f"run_dir={reference_dir}",
                                   f"total_samples={(saved_step + EXTRA_STEPS) * BATCH}", *SETTINGS)
    ref_log = tmp / f"reference-{ref_job}.out"
    try:
        assert train_cluster.wait_for_job(ref_job, JOB_TIMEOUT, ref_log) == "COMPLETED", ref_log.read_text()[-4000:]
    finally:
        train_cluster.run("scancel", ref_job)
    return PreemptedRun(job, run_dir, log.read_text(), saved_step, latest_after_signal, steps_before_requeue,
                        reference_dir)


def test_both_ranks_join_one_group_and_checkpoint(preempted: PreemptedRun) -> None:
    first = restart_segment(preempted.log, preempted.job, 0)
    assert "world size 2 (gloo on cpu, launcher torchrun)" in first, first[-4000:]
    checkpoint = preempted.run_dir / "checkpoints" / preempted.latest_after_signal
    # ZeRO-2 writes one optimizer shard per rank: both ranks took part in the save.
    shards = sorted(p.name for p in checkpoint.glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (checkpoint / "mp_rank_00_model_states.pt").is_file()


def test_usr1_saves_a_checkpoint_and_the_job_requeues_cleanly(preempted: PreemptedRun) -> None:
    first = restart_segment(preempted.log, preempted.job, 0)
    assert preempted.saved_step >= 2
    assert f"preemption signal: saved step {preempted.saved_step}" in first, first[-4000:]
    assert f"requeueing job {preempted.job}" in first
    # The workers exit 0; torchrun's agent itself ends with its own SignalException after forwarding the
    # signal (documented in launch/README.md). Any other traceback or a worker's "error: [rank N]" fails.
    tracebacks = first.count("Traceback (most recent call last)")
    agent_exits = first.count("elastic.multiprocessing.api.SignalException: Process")
    assert tracebacks == agent_exits <= 1, first[-4000:]
    assert "ChildFailedError" not in first and "error: [rank" not in first, first[-4000:]
    # The first run stopped at the step it saved: nothing was trained (and lost) after the checkpoint.
    assert preempted.steps_before_requeue == list(range(1, preempted.saved_step + 1))


def test_requeued_job_resumes_the_step_count_data_and_losses(preempted: PreemptedRun) -> None:
    saved, final = preempted.saved_step, preempted.saved_step + EXTRA_STEPS
    second = restart_segment(preempted.log, preempted.job, 1)
    assert f"total_samples={final * BATCH}" in second.splitlines()[0]  # OVERRIDES_FILE reached the requeued job
    assert f"resuming from {preempted.run_dir / 'checkpoints' / f'step_{saved:08d}'}" in second, second[-4000:]
    metrics = read_metrics(preempted.run_dir)
    # Continuous step count and data stream: no step repeated or skipped, every sample seen once.
    assert [m["step"] for m in metrics] == list(range(1, final + 1))
    assert [m["samples_seen"] for m in metrics] == [step * BATCH for step in range(1, final + 1)]
    assert metrics[saved]["samples_seen"] == metrics[saved - 1]["samples_seen"] + BATCH
    # Resume is exact: the same losses and final weights as the run that was never interrupted.
    reference = read_metrics(preempted.reference_dir)
    assert [m["step"] for m in reference] == list(range(1, final + 1))
    for ours, theirs in zip(metrics, reference, strict=True):
        assert math.isfinite(ours["loss"])
        assert abs(ours["loss"] - theirs["loss"]) <= 1e-5, (ours["step"], ours["loss"], theirs["loss"])
    resumed = load_file(str(preempted.run_dir / "export" / "model.safetensors"))
    uninterrupted = load_file(str(preempted.reference_dir / "export" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    worst = max(float((resumed[k] - uninterrupted[k]).abs().max()) for k in resumed)
    assert worst <= 1e-5, f"exported weights differ from the uninterrupted run by {worst}"


def test_eval_sbatch_writes_results(preempted: PreemptedRun, train_cluster: Any, shards: Path, tmp_path: Path) -> None:
    suite = tmp_path / "slurm-suite.yaml"
    suite.write_text(json.dumps({"tasks": [
        {"name": "zs", "task": "zeroshot", "data": f"{shards}::val", "templates": f"{shards}/zeroshot_templates.json"},
        {"name": "ret", "task": "retrieval", "data": f"{shards}::val"},
    ]}))
    cluster = train_cluster.with_env({"EVAL_OUT": str(tmp_path / "eval"), "EVAL_ARGS": "--batch-size 32"})
    job = cluster.submit(f"--output={tmp_path}/%x-%j.out", "launch/slurm/eval.sbatch", str(preempted.run_dir), str(suite))
    log = tmp_path / f"clip-eval-{job}.out"
    assert cluster.wait_for_job(job, JOB_TIMEOUT, log) == "COMPLETED", log.read_text()[-4000:]
    results = json.loads((tmp_path / "eval" / "slurm-suite" / "results.json").read_text())
    assert sorted(r["dataset"] for r in results) == ["ret", "zs"], results
    for record in results:
        assert record["pretrained"] == str(preempted.run_dir) and record["num_samples"] == 96, record
        assert record["metrics"] and all(math.isfinite(v) for v in record["metrics"].values()), record
