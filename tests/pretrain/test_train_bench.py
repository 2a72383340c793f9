"""benchmarks.train_bench: open_clip_train log parsing, the throughput rule, and an end-to-end smoke run."""
from __future__ import annotations

import json
import re

import pytest

from benchmarks import train_bench as bench
from tests.pretrain.runner import run_module

# Lines as open_clip_train/train.py's logging.info writes them (logger format "%(asctime)s | %(levelname)s | ..."),
# including #g's exponent form for large rates.
PEER_LOG = """\
2026-11-23,15:41:20 | INFO | Start epoch 0
2026-11-23,15:41:33 | INFO | Train Epoch: 0 [  64/1024 (6%)] Data (t): 1.429 Batch (t): 11.212, 5.70837/s, 5.70837/s/gpu LR: 0.000250 Logit Scale: 14.286 Contrastive_loss: 4.5721 (4.5721) Loss: 4.5721 (4.5721)
2026-11-23,15:41:43 | INFO | Train Epoch: 0 [ 128/1024 (12%)] Data (t): 0.035 Batch (t): 9.893, 6.46929/s, 6.46929/s/gpu LR: 0.000500 Logit Scale: 14.282 Contrastive_loss: 4.6147 (4.5934) Loss: 4.6147 (4.5934)
2026-11-23,15:41:47 | INFO | Train Epoch: 0 [ 192/1024 (19%)] Data (t): 0.021 Batch (t): 4.399, 14.5485/s, 14.5485/s/gpu LR: 0.000500 Logit Scale: 14.275 Contrastive_loss: 4.5010 (4.5626) Loss: 4.5010 (4.5626)
2026-11-23,15:41:51 | INFO | Train Epoch: 0 [1024/1024 (100%)] Data (t): 0.033 Batch (t): 0.001, 1.23457e+06/s, 617284./s/gpu LR: 0.000494 Logit Scale: 14.268 Contrastive_loss: 4.3098 (4.4994) Loss: 4.3098 (4.4994)
bench_peer: peak_memory_mb=1082.5
"""


def test_parse_peer_log_reads_every_step() -> None:
    assert bench.parse_peer_log(PEER_LOG) == [5.70837, 6.46929, 14.5485, 1.23457e06]


def test_parse_peer_log_ignores_other_lines() -> None:
    assert bench.parse_peer_log("2026-11-23,15:41:20 | INFO | Start epoch 0\nLoss: 4.1\n") == []


def test_parse_peer_peak_memory() -> None:
    assert bench.parse_peer_peak_memory(PEER_LOG) == pytest.approx(1082.5)
    assert bench.parse_peer_peak_memory("no marker") is None


def test_summarize_drops_warmup_and_takes_median() -> None:
    median, window, timed = bench.summarize([1.0, 2.0, 10.0, 20.0, 40.0], global_batch=40, warmup=2)
    assert (median, timed) == (20.0, 3)
    assert window == pytest.approx(120 / (4 + 2 + 1))  # 3 steps of 40 samples in 4 s + 2 s + 1 s


def test_summarize_without_timed_steps_is_a_clear_error() -> None:
    with pytest.raises(bench.BenchError, match="raise --samples"):
        bench.summarize([5.0, 6.0], global_batch=8, warmup=3)


def test_too_few_samples_is_rejected() -> None:
    result = run_module(["-m", "benchmarks.train_bench", "--samples", "64", "--batch-size", "32"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --samples:")


@pytest.mark.slow
def test_bench_end_to_end(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["-m", "benchmarks.train_bench", "--samples", "256", "--batch-size", "32", "--stages", "0,2", "--out", str(out)]
    result = run_module(args, timeout=240)  # ~2 min on 2 shared cores
    text = result.stdout
    assert re.search(r"^ours \(pretrain\.train\)\s+\d+\.\d", text, re.M), text
    assert re.search(r"^theirs \(open_clip_train\)\s+\d+\.\d", text, re.M), text
    assert re.search(r"^ratio ours/theirs: \d+\.\d\d", text, re.M), text
    assert re.search(r"^2\s+\d+\.\d", text, re.M), text  # ZeRO-2 row
    payload = json.loads(out.read_text())
    assert payload["ours"]["samples_per_s"] > 0 and payload["theirs"]["samples_per_s"] > 0
    assert payload["ratio"] == pytest.approx(payload["ours"]["samples_per_s"] / payload["theirs"]["samples_per_s"])
    assert payload["theirs"]["steps"] == 8 and payload["ours"]["steps"] == 8
    assert set(payload["zero_stages"]) == {"0", "2"}
