"""launch/torchrun.sh end to end on CPU, with a stand-in training module (TRAIN_MODULE)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Stands in for pretrain.train: joins the gloo group, records what it was given, and on SIGUSR1 /
# SIGTERM "checkpoints" (writes a file) and exits 0, as the real training loop does.
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

    def on_signal(signum, frame):
        (out / f"saved-{env.rank}").write_text(signal.Signals(signum).name)
        sys.exit(0)

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dist.init_process_group("gloo")
    ones = __import__("torch").ones(1)
    dist.all_reduce(ones)
    record = {"env": env.__dict__, "config": args.config, "overrides": args.overrides,
              "sum": ones.item(), "ds_accelerator": os.environ.get("DS_ACCELERATOR")}
    (out / f"rank-{env.rank}.json").write_text(json.dumps(record))
    if os.environ.get("FAKE_WAIT"):
        while True:
            time.sleep(0.1)
    dist.destroy_process_group()
    """
)


def launch(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    config = tmp_path / "config.yaml"
    config.write_text("model: {}\n")
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(tmp_path),
        "TRAIN_MODULE": "fake_train",
        "FAKE_OUT": str(tmp_path),
        "CUDA_VISIBLE_DEVICES": "",  # take the CPU path even on a GPU machine
        **env,
    }
    return subprocess.Popen(["bash", str(REPO / "launch" / "torchrun.sh"), *args, str(config), "a.b=1", "c=x y"],
                            env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(paths: list[Path], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"workers did not start: {proc.communicate()[0][-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_two_cpu_workers_get_ranks_gloo_and_the_arguments(tmp_path: Path) -> None:
    proc = launch(tmp_path)  # no NPROC: 2 CPU processes when there is no GPU
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-3000:]
    records = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(records):
        assert record["env"]["rank"] == rank and record["env"]["world_size"] == 2
        assert record["env"]["launcher"] == "torchrun" and record["env"]["local_world_size"] == 2
        assert record["config"] == str(tmp_path / "config.yaml")
        assert record["overrides"] == ["a.b=1", "c=x y"]
        assert record["sum"] == 2.0 and record["ds_accelerator"] == "cpu"


@pytest.mark.slow
def test_sigusr1_reaches_every_worker(tmp_path: Path) -> None:
    proc = launch(tmp_path, "2", FAKE_WAIT="1")
    wait_for([tmp_path / "rank-0.json", tmp_path / "rank-1.json"], proc)
    proc.send_signal(signal.SIGUSR1)
    output = proc.communicate(timeout=60)[0]
    assert [(tmp_path / f"saved-{rank}").read_text() for rank in (0, 1)] == ["SIGUSR1", "SIGUSR1"], output[-3000:]


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    script = str(REPO / "launch" / "torchrun.sh")
    missing = subprocess.run(["bash", script, "2", "nope.yaml"], cwd=tmp_path, capture_output=True, text=True,
                             check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error: config") and "nope.yaml" in missing.stderr
    usage = subprocess.run(["bash", script], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
    (tmp_path / "c.yaml").write_text("{}\n")
    bad = subprocess.run(["bash", script, "c.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False,
                         env={"PATH": os.environ["PATH"], "NPROC": "0", "CUDA_VISIBLE_DEVICES": ""})
    assert bad.returncode == 2 and bad.stderr.startswith("error: NPROC=0")
