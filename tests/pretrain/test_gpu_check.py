"""The GPU check's report: the figures the GPU-step and data issues set targets for, as ratios."""
from __future__ import annotations

from benchmarks import gpu_check


def _run(samples_per_s: float) -> dict:
    return {"ok": True, "result": {"ours": {"samples_per_s": samples_per_s}, "settings": {"model": "ViT-B-32", "batch_size": 256}}}


def test_summary_reports_every_ratio():
    real = _run(3000.0)
    real["result"]["theirs"] = {"samples_per_s": 2000.0}
    real["result"]["zero_stages"] = {"0": {"samples_per_s": 3000.0, "peak_memory_mb": 1}, "2": {"samples_per_s": 2900.0}}
    loader_rows = [{"loader": "open_clip", "workers": 14, "images_per_s": 2200.0, "per_worker": 157.0, "vs_open_clip": 1.0},
                   {"loader": "ours, device decode (cuda)", "workers": 14, "images_per_s": 5000.0, "per_worker": 357.0,
                    "vs_open_clip": 5000 / 2200}]
    report = {"bench": {"real": real, "real-gpu-decode": _run(3400.0), "cheap": _run(3300.0),
                        "ceiling": {"ok": True, "result": {"samples_per_s": 3500.0}},
                        "loader": {"ok": True, "result": {"rows": loader_rows}}}}
    text = "\n".join(gpu_check.summary(report))
    assert "| ours ZeRO-0, real-JPEG shards, data.decode=gpu | 3400 |" in text
    assert "ours / open_clip_train: 1.50" in text
    assert "ours (cheap decode) / ceiling: 0.94" in text
    assert "loader, data.decode=gpu / open_clip: 2.27 (target >= 2)" in text
    assert "ZeRO-2 / ZeRO-0: 0.97" in text
    assert "| ours, device decode (cuda) | 14 | 5000 | 357 | 2.27 |" in text


def test_summary_of_failed_phases_says_n_a():
    text = "\n".join(gpu_check.summary({"bench": {}}))
    assert "| ours ZeRO-0, real-JPEG shards | n/a |" in text and "ours / open_clip_train" not in text


def test_missing_coco_mini_is_one_line(tmp_path, capsys):
    assert gpu_check.main(["--coco-mini", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --coco-mini")
