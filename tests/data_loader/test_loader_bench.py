"""The bench CLI runs end to end (tiny numbers) and rejects bad input with `error:` + exit 2."""
from __future__ import annotations

import json

import pytest

from benchmarks import loader_bench as bench
from tests.data_loader.loader_helpers import write_shards


@pytest.mark.slow
def test_bench_smoke(tmp_path, capsys):
    write_shards(tmp_path / "shards", [8, 8])
    out = tmp_path / "rows.json"
    assert bench.main(["--shards", str(tmp_path / "shards"), "--batches", "2", "--batch-size", "4", "--workers", "1",
                       "--decode", "cpu,gpu", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "/ open_clip" in lines[0] and len(lines) == 5  # header + open_clip, cpu, cpu no-fast, device decode
    rows = json.loads(out.read_text())["rows"]
    assert [r["loader"] for r in rows][:3] == ["open_clip", "ours, cpu decode", "ours, cpu decode no-fast"]
    assert "device decode" in rows[3]["loader"]
    assert all(r["images_per_s"] > 0 and r["workers"] == 1 for r in rows)


@pytest.mark.slow
def test_bench_on_real_photos(tmp_path, capsys, shared_data):
    """--coco-mini builds real-photo shards with data.build and measures all loaders on them."""
    assert bench.main(["--coco-mini", str(shared_data / "coco-mini"), "--replicas", "1", "--image-side", "96",
                       "--batches", "2", "--batch-size", "8", "--workers", "1", "--decode", "cpu,gpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(float(line.split("|")[2]) > 0 for line in lines[1:])


def test_bench_bad_decode_choice(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--decode", "tpu"])
    assert "--decode" in capsys.readouterr().err


def test_bench_missing_shards(tmp_path, capsys):
    assert bench.main(["--shards", str(tmp_path / "none-{0..3}.tar")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
