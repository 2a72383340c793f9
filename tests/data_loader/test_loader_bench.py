"""The bench CLI runs end to end (tiny numbers) and rejects bad input with `error:` + exit 2."""
from __future__ import annotations

import pytest

from benchmarks import loader_bench as bench
from tests.data_loader.loader_helpers import write_shards


@pytest.mark.slow
def test_bench_smoke(tmp_path, capsys):
    write_shards(tmp_path, [8, 8])
    assert bench.main(["--shards", str(tmp_path), "--batches", "2", "--batch-size", "4", "--workers", "1"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "ours/theirs" in header and row.split("|")[0].strip() == "1"
    assert all(float(cell.strip().rstrip("x")) > 0 for cell in row.split("|")[1:])


def test_bench_missing_shards(tmp_path, capsys):
    assert bench.main(["--shards", str(tmp_path / "none-{0..3}.tar")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
