"""The train step reads nothing back from the device between logging intervals (each read is a
blocking synchronisation on CUDA). Counted on CPU with a dispatch hook (tests/pretrain/sync_probe.py)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.pretrain.runner import run_module
from tests.pretrain.sync_probe import SyncCounter

pytestmark = pytest.mark.slow


def probe(shards, run_dir, *overrides: str) -> dict:
    result = run_module(["-m", "tests.pretrain.sync_probe", "pretrain/configs/smoke.yaml", f"data.train={shards}",
                         f"run_dir={run_dir}", "grad_accum=2", *overrides])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_counter_sees_reads():
    counter = SyncCounter()
    with counter:
        float(torch.ones(2).sum())
        bool(torch.ones(1) > 0)
        torch.arange(4)[torch.arange(4) > 1]
    assert sum(counter.calls.values()) == 3, counter.calls


@pytest.mark.parametrize("precision,mlm", [("fp32", "0"), ("bf16", "0.5"), ("fp16", "0.5")])
def test_zero0_step_has_no_device_read(precision, mlm, demo_shards, tmp_path):
    found = probe(demo_shards, tmp_path, f"precision={precision}", "zero.stage=0", f"loss.mlm_weight={mlm}")
    assert found["steps"] == 5 and found["step_reads"] == {}, found


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_read_only_inside_deepspeed(stage, demo_shards, tmp_path):
    """ZeRO 1-3 read the gradient norm back once per step inside DeepSpeed (its overflow check);
    none of the reads may come from this project's code."""
    found = probe(demo_shards, tmp_path, "precision=bf16", f"zero.stage={stage}", "loss.mlm_weight=0.5")
    assert found["steps"] == 5
    assert all(" in deepspeed/" in read for read in found["step_reads"]), found
