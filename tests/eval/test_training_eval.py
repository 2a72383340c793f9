"""Training-time evaluation under ZeRO-3 with 2 ranks: images sharded, same metrics as 1 process.

eval.training.evaluate_engine (handed to pretrain.train by its CLI) wraps the DeepSpeed engine in eval.encoder.ForwardEncoder and calls
eval.run.run_suite on every rank. Each rank encodes its share of the val images (21 images over 2
ranks: 11 and 10, so one rank pads a forward), and the records must equal an ordinary one-process
evaluation of the exported weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_zero3_two_rank_eval_equals_one_process_eval_of_the_export(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    run(["-m", "clip_pretrain.data.demo", "--output", str(shards), "--num-train", "64", "--num-val", "21", "--shard-size", "16",
         "--no-progress"])
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({"tasks": [
        {"name": "zs", "task": "zeroshot_classification", "data": str(shards),  # val by default: a note says so
         "templates": str(shards / "zeroshot_templates.json")},
        {"name": "rt", "task": "zeroshot_retrieval", "data": f"{shards}::val"},
    ]}))
    run_dir = tmp_path / "run"
    train = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "clip_pretrain.pretrain.train",
                 "--config", "pretrain/configs/smoke.yaml", f"data.train={shards}::train", f"run_dir={run_dir}",
                 "zero.stage=3", "micro_batch=8", "total_samples=32", "checkpoint.every_steps=0",
                 "checkpoint.export=true", f"eval.suite={suite}", "eval.batch_size=4"])
    assert "evaluating 'val'" in train.stdout
    [step_file] = sorted((run_dir / "eval").glob("step_*.json"))
    during = json.loads(step_file.read_text())
    run(["-m", "clip_pretrain.eval.run", "--checkpoint", str(run_dir / "export"), "--suite", str(suite), "--out", str(tmp_path / "after"),
         "--device", "cpu", "--workers", "0", "--batch-size", "5"])
    after = json.loads((tmp_path / "after" / "results.json").read_text())
    for a, b in zip(during, after):
        assert (a["dataset"], a["num_samples"], a["skipped"]) == (b["dataset"], 21, 0)
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-5), a["dataset"]
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["eval/zs/acc1"] == pytest.approx(after[0]["metrics"]["acc1"], abs=1e-5)
