"""benchmarks.learning_pool: results JSONs of one recipe pooled over seeds; anything else refused."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from benchmarks import learning_bench as bench
from benchmarks import learning_pool as pool
from tests.pretrain.test_learning_bench import record

SHARDS = "ab" * 32


def write(tmp_path, name: str, runs: list[tuple[int, str, float]], variants: dict | None = None,
          sha: str | None = SHARDS, **settings) -> str:
    recipe = bench.recipe_settings({"coco": 3008})
    if sha:
        recipe["datasets"]["coco"]["shards_sha256"] = sha
    payload = {"seeds": sorted({seed for seed, _, _ in runs}), "settings": {**recipe, **settings},
               "variants": variants or {}, "runs": [asdict(record(s, t, v, "coco")) for s, t, v in runs]}
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return str(path)


def chosen_and_confirmed(tmp_path, **confirm_settings) -> list[str]:
    """Seeds 0-1 with a reused baseline, seeds 2-3 trained afresh, as --first-seed makes them."""
    mlm = {"mlm": ["loss.mlm_weight=0.2"]}
    base = write(tmp_path, "base.json", [(s, t, 0.1) for s in (0, 1) for t in ("ours", "theirs")])
    chosen = write(tmp_path, "chosen.json", [(s, t, 0.1) for s in (0, 1) for t in ("ours", "theirs")] +
                   [(0, "mlm", 0.2), (1, "mlm", 0.3)], mlm)
    confirmed = write(tmp_path, "confirmed.json", [(2, "ours", 0.2), (3, "ours", 0.2), (2, "theirs", 0.1),
                                                   (3, "theirs", 0.1), (2, "mlm", 0.4), (3, "mlm", 0.5)],
                      mlm, **confirm_settings)
    return [base, chosen, confirmed]


def test_runs_of_one_recipe_pool_over_all_seeds(tmp_path) -> None:
    records, variants, datasets = pool.pool(chosen_and_confirmed(tmp_path))
    assert len(records) == 12  # the baseline runs in base.json and chosen.json count once
    summary = bench.summarize(records)["coco"]["zeroshot_top1"]
    assert summary["mlm"]["values"] == [0.2, 0.3, 0.4, 0.5]
    assert summary["mlm"]["vs_theirs"] == pytest.approx(0.25) and summary["diff"] == pytest.approx(0.05)
    assert variants == [bench.Variant("mlm", ("loss.mlm_weight=0.2",))] and datasets["coco"].samples == 3008
    table = pool.markdown(records, variants, datasets, ["a", "b", "c"])
    assert "pooled over seeds 0, 1, 2, 3" in table and "ours 4, theirs 4, mlm 4" in table
    assert "| mlm | coco | zero-shot top-1 | 35.0 ± 12.9 | +25.0 | +20.0 |" in table


@pytest.mark.parametrize("settings, match", [
    ({"lr": 1e-3}, r"confirmed.json: lr 0.001, but .*base.json has 0.002; pool only runs of one recipe"),
    ({"model": "clip-small"}, "confirmed.json: model 'clip-small', but"),
    ({"datasets": {"coco": {"samples": 640, "shards_sha256": SHARDS}}}, "confirmed.json: coco samples 640, but .* has 3008"),
    ({"datasets": {"coco": {"samples": 3008, "shards_sha256": "cd" * 32}}},
     r"confirmed.json: ran coco on other shards \(sha256 cdcdcdcdcdcd\) than .*base.json \(abababababab\)"),
])
def test_another_recipe_or_other_shards_are_refused(tmp_path, settings, match) -> None:
    with pytest.raises(bench.BenchError, match=match):
        pool.pool(chosen_and_confirmed(tmp_path, **settings))


def test_a_variant_name_means_one_set_of_overrides(tmp_path) -> None:
    paths = chosen_and_confirmed(tmp_path)
    payload = json.loads(open(paths[2]).read())
    payload["variants"]["mlm"] = ["loss.mlm_weight=0.5"]
    open(paths[2], "w").write(json.dumps(payload))
    with pytest.raises(bench.BenchError, match=r"variant mlm is `loss.mlm_weight=0.5`, elsewhere `loss.mlm_weight=0.2`"):
        pool.pool(paths)


def test_a_run_in_two_files_must_be_the_same_run(tmp_path) -> None:
    first = write(tmp_path, "first.json", [(0, "ours", 0.1)])
    again = write(tmp_path, "again.json", [(0, "ours", 0.3)])
    with pytest.raises(bench.BenchError, match="again.json: dataset coco seed 0 ours differs from the same run"):
        pool.pool([first, again])


def test_cli_writes_the_table_and_refuses_in_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "pooled.md"
    assert pool.main([*chosen_and_confirmed(tmp_path), "--out", str(out)]) == 0
    assert "| mlm | coco | zero-shot top-1 |" in out.read_text()
    missing = write(tmp_path, "old.json", [(5, "ours", 0.1)], sha=None)
    assert pool.main([str(tmp_path / "base.json"), missing]) == 0
    assert "old.json records no shards_sha256 for coco" in capsys.readouterr().err
    assert pool.main([str(tmp_path / "nope.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "nope.json: cannot read it as a results JSON" in error and error.count("\n") == 1


def test_committed_results_pool() -> None:
    results = bench.REPO / "benchmarks" / "results"
    records, _, _ = pool.pool([str(results / "learning-coco-5seeds-2026-11-29.json"),
                               str(results / "learning-coco-variants-2026-11-29-a.json")])
    assert {record.seed for record in records} == {0, 1, 2, 3, 4}
