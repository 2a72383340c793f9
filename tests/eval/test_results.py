"""Result files: CLIP_benchmark's schema (as a test), strict JSON, its file name, our table beside it."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from clip_pretrain.eval import run
from clip_pretrain.eval.results import benchmark_file_name, dumps, write_benchmark_files
from tests.eval.helpers import write_shards

# CLIP_benchmark's result object (clip_benchmark/cli.py `dump`), as a JSON Schema, with the metric
# names its evaluators return (metrics/zeroshot_classification.py, zeroshot_retrieval.py,
# linear_probe.py; the probe's `lr` is our `weight_decay`, since L-BFGS has no learning rate).
SCHEMA = {
    "type": "object",
    "required": ["dataset", "model", "pretrained", "task", "metrics", "language"],
    "additionalProperties": False,
    "properties": {
        "dataset": {"type": "string"}, "model": {"type": "string"}, "pretrained": {"type": "string"},
        "language": {"type": "string"},
        "task": {"enum": ["zeroshot_classification", "zeroshot_retrieval", "linear_probe", "captioning"]},
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
    },
}
METRIC_NAMES = {
    "zeroshot_classification": {"required": {"acc1", "mean_per_class_recall"}, "optional": {"acc5"}},
    "zeroshot_retrieval": {"required": set(), "pattern": r"(image|text)_retrieval_recall@\d+"},
    "linear_probe": {"required": {"lp_acc1", "lp_mean_per_class_recall", "weight_decay", "epochs", "seed",
                                  "fewshot_k"}, "optional": {"lp_acc5"}},
}
JSON_TYPES = {"object": dict, "string": str, "number": (int, float), "null": type(None)}


def validate(value: object, schema: dict, where: str = "$") -> None:
    """The subset of JSON Schema used above; raises AssertionError naming the first violation."""
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(isinstance(value, JSON_TYPES[kind]) and not isinstance(value, bool) for kind in kinds), \
            f"{where}: {value!r} is not {kinds}"
    if isinstance(value, dict):
        missing = set(schema.get("required", [])) - set(value)
        assert not missing, f"{where}: missing {sorted(missing)}"
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                validate(item, properties[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{where}: unexpected key {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], f"{where}.{key}")


def validate_clip_benchmark(text: str) -> dict:
    """Strict JSON (a bare NaN/Infinity fails), the schema, and the task's metric names."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: bare {constant}")
    payload = json.loads(text, parse_constant=refuse)
    validate(payload, SCHEMA)
    names = METRIC_NAMES[payload["task"]]
    metrics = set(payload["metrics"])
    assert names["required"] <= metrics, (payload["task"], metrics)
    extra = metrics - names["required"] - names.get("optional", set())
    assert all(re.fullmatch(names.get("pattern", "(?!)"), name) for name in extra), extra
    return payload


def test_schema_check_rejects_what_clip_benchmark_would_not_write() -> None:
    good = {"dataset": "d", "model": "m", "pretrained": "p", "task": "zeroshot_classification",
            "metrics": {"acc1": 0.5, "acc5": None, "mean_per_class_recall": 0.5}, "language": "en"}
    validate_clip_benchmark(json.dumps(good))
    for bad, message in [({**good, "num_samples": 3}, "unexpected key"), ({**good, "task": "zs"}, "not in"),
                         ({k: v for k, v in good.items() if k != "language"}, "missing"),
                         ({**good, "metrics": {"acc1": 1.0, "mean_per_class_recall": 1.0, "top1": 1.0}}, "top1")]:
        with pytest.raises(AssertionError, match=message):
            validate_clip_benchmark(json.dumps(bad))
    with pytest.raises(AssertionError, match="bare NaN"):
        validate_clip_benchmark(json.dumps({**good, "metrics": {"acc1": math.nan}}))


def test_nan_becomes_null_and_names_follow_clip_benchmark(tmp_path: Path) -> None:
    assert json.loads(dumps({"metrics": {"acc5": math.nan, "x": [math.inf, 1.0]}})) == {"metrics": {"acc5": None, "x": [None, 1.0]}}
    weights = tmp_path / "runs" / "b32" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    record = {"dataset": "wds/mscoco", "model": "ViT-B-32", "pretrained": str(weights), "task": "zeroshot_retrieval",
              "metrics": {}, "language": "en", "num_samples": 5}
    # CLIP_benchmark: '/' in the dataset -> '_', a pretrained file path -> its base name.
    assert benchmark_file_name(record) == "wds_mscoco_model.safetensors_ViT-B-32_en_zeroshot_retrieval.json"
    assert benchmark_file_name({**record, "pretrained": "laion2b_s34b_b79k"}).startswith("wds_mscoco_laion2b_s34b_b79k_")
    [path] = write_benchmark_files(tmp_path / "out", [record])
    assert json.loads(path.read_text()) == {k: record[k] for k in ("dataset", "model", "pretrained", "task", "metrics",
                                                                    "language")}


def test_eval_run_writes_valid_clip_benchmark_files(checkpoints: dict, tmp_path: Path) -> None:
    samples = [{"key": f"k{i}", "colour": (60 * i, 90, 0), "cls": i % 3, "captions": [f"c{i}", f"d{i}"]}
               for i in range(9)]
    shards = write_shards(tmp_path / "shards", samples, ["cat", "dog", "car"])
    (tmp_path / "suite.yaml").write_text(json.dumps({"tasks": [
        {"name": "zs", "task": "zeroshot", "data": str(shards), "templates": ["a {}."]},  # 3 classes: no acc5
        {"name": "rt", "task": "retrieval", "data": str(shards)},
        {"name": "lp", "task": "linear_probe", "data": str(shards), "holdout": 0.34, "weight_decays": [0.001]},
    ]}))
    checkpoint = checkpoints["export_dir"][0]
    run.main(["--checkpoint", checkpoint, "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"),
              "--device", "cpu", "--workers", "0"])
    files = sorted((tmp_path / "out").glob("*_en_*.json"))
    assert [path.name.split("_export_")[0] for path in files] == ["lp", "rt", "zs"]
    payloads = [validate_clip_benchmark(path.read_text()) for path in files]
    assert payloads[0]["metrics"]["weight_decay"] == 0.001 and payloads[0]["metrics"]["fewshot_k"] == -1
    assert "acc5" not in payloads[2]["metrics"]
    ours = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["dataset"], r["num_samples"]) for r in ours] == [("zs", 9), ("rt", 9), ("lp", 3)]
    assert (tmp_path / "out" / "results.md").read_text().count("\n") == 5
