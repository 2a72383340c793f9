"""Suite files, run_suite with any Encoder, classifier caching, and the eval.run CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clip_pretrain.eval import run
from clip_pretrain.eval.checkpoints import load_checkpoint
from clip_pretrain.eval.results import markdown_table
from clip_pretrain.eval.suite import load_suite, parse_suite
from clip_pretrain.eval.tasks import context
from tests.eval.dist_worker import CountingEncoder  # counts image and text forwards
from tests.eval.helpers import write_shards

REPO = Path(__file__).resolve().parents[2]


def test_shipped_suites_parse() -> None:
    suites = {path.stem: load_suite(path) for path in sorted((REPO / "eval" / "suites").glob("*.yaml"))}
    assert set(suites) == {"demo", "shared-data", "published-template"}
    for suite in suites.values():
        assert {task.task for task in suite.tasks} == {"zeroshot_classification", "zeroshot_retrieval", "linear_probe"}


@pytest.mark.parametrize("tasks, message", [
    ([{"name": "a", "task": "zeroshot"}], r"tasks\[0\] \(a\)\.data: missing"),
    ([{"name": "a", "task": "detect", "data": "x"}],
     r"tasks\[0\] \(a\)\.task: 'detect' is unknown; use one of linear_probe, zeroshot_classification"),
    ([{"name": "a", "task": "zeroshot", "data": "x", "colour": 1}],
     r"tasks\[0\] \(a\)\.colour: not an option of zeroshot_classification; allowed: classnames, data"),
    ([{"name": "b", "task": "retrieval", "data": "x", "templates": "openai"}],
     r"\(b\)\.templates: not an option of zeroshot_retrieval"),
    ([{"name": "a", "task": "zeroshot", "data": "x", "split": "a/b"}], r"\(a\)\.split: 'a/b' is not a split name"),
    ([{"name": "a", "task": "linear_probe", "data": "x", "holdout": 1.5}], r"\(a\)\.holdout: 1.5 must be a fraction"),
    ([{"name": "a", "task": "linear_probe", "data": "x", "fewshot_k": 0}], r"\(a\)\.fewshot_k: must be -1"),
    ([{"name": "a", "task": "linear_probe", "data": "x", "holdout": 0.2, "train_data": "y"}],
     r"\(a\)\.holdout: splits `data` itself"),
    ([{"name": "a", "task": "zeroshot", "data": "x", "max_samples": 0}], r"\(a\)\.max_samples"),
    ([{"name": "a", "task": "zeroshot", "data": "x"}, {"name": "a", "task": "retrieval", "data": "y"}], "appears twice"),
    ([], "non-empty 'tasks:' list"),
])
def test_suite_validation_names_task_and_key(tasks: list, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_suite({"tasks": tasks}, "s.yaml")
    assert str(info.value).startswith("s.yaml") and "\n" not in str(info.value)


def shard_suite(tmp_path: Path) -> Path:
    samples = [{"key": f"k{i}", "colour": (40 * i, 0, 0), "cls": i % 2, "captions": [f"red {i}", f"dark {i}"]}
               for i in range(6)]
    write_shards(tmp_path / "shards", samples, ["cat", "dog"])
    suite = {"tasks": [
        {"name": "zs", "task": "zeroshot", "data": str(tmp_path / "shards"), "split": "val", "templates": ["a {}."]},
        {"name": "rt", "task": "retrieval", "data": f"{tmp_path / 'shards'}::val", "max_samples": 4},
    ]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    return tmp_path / "suite.yaml"


def test_run_suite_records_and_caches(checkpoints: dict, tmp_path: Path) -> None:
    encoder = CountingEncoder(load_checkpoint(checkpoints["export_dir"][0]))
    suite = shard_suite(tmp_path)
    records = run.run_suite(encoder, suite, batch_size=4, model="tiny", pretrained="ck", model_id="step_1",
                            cache_dir=tmp_path / "cache", progress=False)
    assert [(r["dataset"], r["task"], r["num_samples"]) for r in records] == [
        ("zs", "zeroshot_classification", 6), ("rt", "zeroshot_retrieval", 4)]
    assert all(r["model"] == "tiny" and r["pretrained"] == "ck" and r["language"] == "en" for r in records)
    calls_first = encoder.text_calls  # 1 classifier batch + 2 caption batches (8 captions, batch 4)
    images_first = encoder.image_calls
    again = run.run_suite(encoder, suite, batch_size=4, model_id="step_1", progress=False)
    assert encoder.text_calls - calls_first == calls_first - 1  # only the retrieval captions again
    assert encoder.image_calls == images_first  # image features came from the cache
    assert again[0]["metrics"] == records[0]["metrics"]
    context._classifiers.clear()
    context.FEATURES.entries.clear()
    from_disk = run.run_suite(encoder, suite, batch_size=4, model_id="step_1", cache_dir=tmp_path / "cache",
                              progress=False)
    assert encoder.image_calls == images_first
    assert from_disk[0]["metrics"] == records[0]["metrics"]
    assert sorted(path.name.split("-")[0] for path in (tmp_path / "cache").iterdir()) == [
        "classifier", "features", "features"]  # rt reads only 4 images: its own entry
    run.run_suite(encoder, suite, batch_size=4, model_id="step_2", progress=False)
    assert {key[0] for key in context._classifiers} == {"step_2"} and context.FEATURES.model_id == "step_2"
    assert encoder.image_calls > images_first
    assert "| zs | zeroshot_classification | val | 6 | 0 |" in markdown_table(records)


def test_tasks_on_one_dataset_encode_its_images_once(checkpoints: dict, tmp_path: Path) -> None:
    encoder = CountingEncoder(load_checkpoint(checkpoints["export_dir"][0]))
    samples = [{"key": f"k{i:02d}", "colour": (25 * i, 0, 250 - 25 * i), "cls": i % 2, "captions": [f"c{i}"]}
               for i in range(10)]
    shards = write_shards(tmp_path / "shards", samples, ["cat", "dog"])
    suite = parse_suite({"tasks": [
        {"name": "zs", "task": "zeroshot_classification", "data": str(shards), "templates": ["a {}."]},
        {"name": "lp", "task": "linear_probe", "data": str(shards), "holdout": 0.4},
    ]}, "s.yaml")
    notes: list[str] = []
    records = run.run_suite(encoder, suite, batch_size=3, model_id="once", progress=False, notes=notes)
    assert encoder.image_calls == 4  # ceil(10 / 3) batches, for both tasks together
    assert records[1]["num_samples"] == 4 and records[1]["num_train"] == 6
    assert records[0]["split"] == "val" and notes == []  # a single split needs no note


def test_retrieval_and_zeroshot_share_shard_features_but_not_missing_labels(checkpoints: dict,
                                                                           tmp_path: Path) -> None:
    encoder = CountingEncoder(load_checkpoint(checkpoints["export_dir"][0]))
    samples = [{"key": f"k{i}", "colour": (30 * i, 60, 90), "cls": i % 2, "captions": [f"c{i}"]} for i in range(6)]
    shards = write_shards(tmp_path / "shards", samples, ["cat", "dog"])
    tasks = [{"name": "rt", "task": "retrieval", "data": str(shards)},
             {"name": "zs", "task": "zeroshot", "data": f"{shards}::val", "templates": ["a {}."]}]
    run.run_suite(encoder, parse_suite({"tasks": tasks}, "s.yaml"), batch_size=4, progress=False)
    assert encoder.image_calls == 2  # ceil(6 / 4), once for both tasks
    samples[2]["cls"] = 7  # no such class: retrieval does not care, zero-shot must refuse either way
    write_shards(tmp_path / "shards", samples, ["cat", "dog"])
    for order in (tasks, tasks[::-1]):
        with pytest.raises(ValueError, match=r"(1 images have no known class|unknown class index 7)"):
            run.run_suite(encoder, parse_suite({"tasks": order}, "s.yaml"), batch_size=4, progress=False)


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_on_shared_data_suite_every_kind(all_kinds: dict, shared_data: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "eval" / "suites" / "shared-data.yaml").read_text())
    raw["tasks"] = [task for task in raw["tasks"] if task["task"] != "linear_probe"]
    for task, data in zip(raw["tasks"], ("cifar10-test-2k", "coco-mini/captions.jsonl")):
        task["data"], task["max_samples"] = str(shared_data / data), 12
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(raw))
    tables = set()
    for kind, (checkpoint, model_name) in all_kinds.items():
        out = tmp_path / kind
        run.main(["--checkpoint", checkpoint, "--suite", str(tmp_path / "small.yaml"), "--out", str(out)]
                 + (["--model", model_name] if model_name else []))
        records = json.loads((out / "results.json").read_text())
        assert [r["dataset"] for r in records] == ["cifar10-test-2k", "coco-mini"]
        tables.add(json.dumps([r["metrics"] for r in records]))
        assert (out / "results.md").read_text().startswith("| dataset | task |")
    assert len(tables) == 1  # every kind loads the same weights


@pytest.mark.slow
@pytest.mark.shared_data
def test_shared_data_suite_as_shipped(checkpoints: dict, shared_data: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("the shipped suite points at ../shared/data; SHARED_DATA names another folder")
    monkeypatch.chdir(REPO)
    encoder = CountingEncoder(load_checkpoint(checkpoints["export_dir"][0]))
    records = run.run_suite(encoder, REPO / "eval" / "suites" / "shared-data.yaml", batch_size=250, progress=False)
    assert [(r["dataset"], r["num_samples"], r.get("num_train")) for r in records] == [
        ("cifar10-test-2k", 2000, None), ("cifar10-test-2k-linear-probe", 400, 1600),
        ("cifar10-test-2k-10-shot", 400, 1600), ("coco-mini", 239, None)]
    assert records[2]["metrics"]["fewshot_k"] == 10 and records[3]["num_captions"] == 239 * 5
    assert encoder.image_calls == 8 + 1  # 2000 / 250 for the three cifar tasks together, 239 / 250 for coco


def test_demo_suite_runs_on_demo_shards(checkpoints: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_pretrain.data.demo import generate_demo

    monkeypatch.chdir(tmp_path)  # demo.yaml paths are relative to the working directory
    generate_demo("demo_out/shards", num_train=4, num_val=12, shard_size=50, progress=False)
    encoder = load_checkpoint(checkpoints["export_dir"][0])
    records = run.run_suite(encoder, REPO / "eval" / "suites" / "demo.yaml", batch_size=8, progress=False)
    assert [r["num_samples"] for r in records[:2]] == [12, 12] and [r["split"] for r in records] == ["val"] * 3
    assert records[2]["num_samples"] + records[2]["num_train"] == 12  # holdout: the val images, split per class
    assert records[0]["skipped"] == 0 and "acc1" in records[0]["metrics"]


def test_cli_bad_suite_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: x, task: zeroshot}\n")
    with pytest.raises(SystemExit) as info:
        run.run_cli(run.main, ["--checkpoint", "nope", "--suite", str(tmp_path / "bad.yaml")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("(x).data: missing; every task needs name, task and data")
