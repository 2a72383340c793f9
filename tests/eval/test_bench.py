"""clip_pretrain.eval.bench runs the evaluation path end to end and prints one images/s row per setting."""
from __future__ import annotations

import re

import pytest

from clip_pretrain.eval import bench


def test_bench_prints_a_row_per_precision_and_worker_count(capsys: pytest.CaptureFixture) -> None:
    bench.main(["--model", "eval-tiny-vit", "--images", "12", "--batch-size", "4", "--workers", "0", "1",
                "--device", "cpu", "--precision", "fp32", "bf16"])
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| (fp32|bf16) \| \d \|", line)]
    assert [row.split("|")[1:3] for row in rows] == [[" fp32 ", " 0 "], [" fp32 ", " 1 "], [" bf16 ", " 0 "],
                                                      [" bf16 ", " 1 "]]
    assert all(float(row.split("|")[3]) > 0 for row in rows)
