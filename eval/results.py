"""Results files: CLIP_benchmark's JSON per task, our list of records, and a markdown table.

A record returned by `eval.run.run_task` holds CLIP_benchmark's six keys plus our extras
(num_samples, skipped, split, ...). `benchmark_json` keeps exactly the six, with strict JSON
values: a NaN or infinity becomes null (json.dumps would write a bare NaN, which is not JSON).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

BENCHMARK_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")
# CLIP_benchmark's `--output` template (its docs and model tables use it to name each result).
DEFAULT_NAME = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


def strict(value: object) -> object:
    """value with every non-finite float replaced by None (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def dumps(payload: object) -> str:
    return json.dumps(strict(payload), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, payload: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(payload))


def benchmark_json(record: dict) -> dict:
    """CLIP_benchmark's result object: exactly its top-level keys."""
    return {key: record[key] for key in BENCHMARK_KEYS}


def benchmark_file_name(record: dict) -> str:
    """DEFAULT_NAME filled the way CLIP_benchmark does: slashes in the dataset become '_', and a
    pretrained that is a file path contributes its base name."""
    pretrained = str(record["pretrained"])
    pretrained_slug = os.path.basename(pretrained.rstrip("/")) if os.path.exists(pretrained) else pretrained
    return DEFAULT_NAME.format(dataset=str(record["dataset"]).replace("/", "_"),
                               pretrained=pretrained_slug.replace("/", "_"), model=record["model"],
                               language=record["language"], task=record["task"])


def write_benchmark_files(folder: str | Path, records: list[dict]) -> list[Path]:
    paths = []
    for record in records:
        path = Path(folder) / benchmark_file_name(record)
        write_json(path, benchmark_json(record))
        paths.append(path)
    return paths


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in metrics.items())


def markdown_table(records: list[dict]) -> str:
    """One row per task: name, task, split, images, skipped, images/s, metrics."""
    lines = ["| dataset | task | split | images | skipped | images/s | metrics |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        speed = record.get("images_per_s")
        lines.append(f"| {record['dataset']} | {record['task']} | {record.get('split') or '-'} | "
                     f"{record['num_samples']} | {record['skipped']} | {f'{speed:.0f}' if speed else '-'} | "
                     f"{format_metrics(record['metrics'])} |")
    return "\n".join(lines) + "\n"
