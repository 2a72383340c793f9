"""The SLURM scripts on a real one-node cluster: srun rank mapping, preemption -> checkpoint -> requeue
-> resume through launch/slurm/pretrain.sbatch, and launch/slurm/eval.sbatch's per-suite steps."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# Stands in for pretrain.train. First run (SLURM_RESTART_COUNT unset): join the group and wait for
# the checkpoint signal, then "save" and exit 0. After the requeue: record the arguments and finish.
FAKE_TRAIN = textwrap.dedent(
    """
    import argparse, json, os, signal, sys, time
    from pathlib import Path
    import torch.distributed as dist
    from clip_pretrain.launch.env import resolve_dist_env

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    env = resolve_dist_env(os.environ)
    out = Path(os.environ["FAKE_OUT"])
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")

    def on_signal(signum, frame):
        (out / f"saved-{restart}-{env.rank}").write_text(signal.Signals(signum).name)
        sys.exit(0)

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dist.init_process_group("gloo")
    record = {"env": env.__dict__, "config": args.config, "overrides": args.overrides}
    (out / f"rank-{restart}-{env.rank}.json").write_text(json.dumps(record))
    while restart == "0":
        time.sleep(0.1)
    dist.destroy_process_group()
    """
)


def test_srun_tasks_map_to_ranks(slurm_cluster: Any) -> None:
    done = slurm_cluster.run("srun", "-N1", "-n2", sys.executable, "-m", "clip_pretrain.launch.env")
    assert done.returncode == 0, done.stderr
    envs = sorted((json.loads(line) for line in done.stdout.splitlines()), key=lambda e: e["rank"])
    assert [(e["rank"], e["local_rank"], e["world_size"], e["launcher"]) for e in envs] == [
        (0, 0, 2, "slurm"), (1, 1, 2, "slurm"),
    ]


def test_pretrain_sbatch_checkpoints_requeues_and_resumes(slurm_cluster: Any, tmp_path: Path) -> None:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "config.yaml").write_text("{}\n")
    env = {**slurm_cluster.env, "TRAIN_MODULE": "fake_train", "PYTHONPATH": str(tmp_path),
           "FAKE_OUT": str(tmp_path), "PYTHON": sys.executable, "NPROC_PER_NODE": "2"}
    cluster = slurm_cluster.with_env(env)
    submitted = cluster.run("sbatch", "--parsable", f"--output={tmp_path}/%x-%j.out",
                            "launch/slurm/pretrain.sbatch", str(tmp_path / "config.yaml"), "optim.lr=0.1")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"clip-pretrain-{job}.out"
    try:
        cluster.wait_until(lambda: all((tmp_path / f"rank-0-{r}.json").exists() for r in (0, 1)), 90, "2 ranks to start", log)
        # What SLURM does 120 s before the time limit (#SBATCH --signal=B:USR1@120).
        assert cluster.run("scancel", "--signal=USR1", "--batch", job).returncode == 0
        cluster.wait_until(lambda: cluster.job_field(job, "Restarts") == "1", 60, "the job to requeue itself", log)
        # The requeued job may start after cred_expire (10 s in launch/slurm_cluster.sh's config).
        cluster.wait_until(lambda: cluster.job_field(job, "JobState") == "COMPLETED", 120, "the resumed job to finish", log)
    finally:
        cluster.run("scancel", job)
    output = log.read_text()
    assert [(tmp_path / f"saved-0-{r}").read_text() for r in (0, 1)] == ["SIGUSR1", "SIGUSR1"], output
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank-1-{rank}.json").read_text())
        assert record["overrides"] == ["optim.lr=0.1", "checkpoint.resume=auto"]
        assert record["env"]["world_size"] == 2 and record["env"]["launcher"] == "torchrun"
    # --open-mode=append: the requeued run's output follows the first run's in the same log.
    assert "(restart 0)" in output and "(restart 1)" in output and "requeueing job" in output


def test_eval_sbatch_runs_one_step_per_suite(slurm_cluster: Any, tmp_path: Path) -> None:
    # A stand-in interpreter that records the command eval.sbatch runs for each suite.
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/bash\necho "$@" > "{tmp_path}/eval-$SLURM_STEP_ID"\n')
    fake_python.chmod(0o755)
    suites = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for path in [*suites, tmp_path / "ckpt"]:
        path.write_text("{}\n")
    env = {**slurm_cluster.env, "PYTHON": str(fake_python), "EVAL_ARGS": "--batch-size 8",
           "EVAL_OUT": str(tmp_path / "out")}
    submitted = slurm_cluster.with_env(env).run(
        "sbatch", "--parsable", "--wait", f"--output={tmp_path}/eval.out", "launch/slurm/eval.sbatch",
        str(tmp_path / "ckpt"), *map(str, suites), timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr + (tmp_path / "eval.out").read_text()
    commands = sorted(p.read_text().split() for p in tmp_path.glob("eval-*"))
    assert commands == [
        ["-m", "clip_pretrain.eval.run", "--checkpoint", str(tmp_path / "ckpt"), "--suite", str(s),
         "--out", str(tmp_path / "out" / s.stem), "--batch-size", "8"]  # one results folder per suite
        for s in suites
    ]


def test_eval_sbatch_rejects_missing_paths(slurm_cluster: Any, tmp_path: Path) -> None:
    submitted = slurm_cluster.run("sbatch", "--parsable", "--wait", f"--output={tmp_path}/eval.out",
                                  "launch/slurm/eval.sbatch", str(tmp_path / "missing"), timeout=120)
    assert submitted.returncode != 0
    assert "error:" in (tmp_path / "eval.out").read_text() and str(REPO) in (tmp_path / "eval.out").read_text()


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"),
    ("# comment\ntotal_samples=32\noptim.lr\n", "has 'optim.lr', not key=value"),
])
def test_pretrain_sbatch_rejects_a_bad_overrides_file(slurm_cluster: Any, tmp_path: Path, content: str | None,
                                                      message: str) -> None:
    overrides = tmp_path / "overrides.txt"
    if content is not None:
        overrides.write_text(content)
    cluster = slurm_cluster.with_env({"OVERRIDES_FILE": str(overrides), "TRAIN_MODULE": "not_run"})
    job = cluster.submit(f"--output={tmp_path}/%x-%j.out", "launch/slurm/pretrain.sbatch", "pretrain/configs/smoke.yaml")
    log = tmp_path / f"clip-pretrain-{job}.out"
    assert cluster.wait_for_job(job, 60, log) == "FAILED"
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "OVERRIDES_FILE" in errors[0] and message in errors[0], log.read_text()
