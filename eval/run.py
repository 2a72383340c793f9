"""Run an evaluation suite (several zero-shot / retrieval tasks) on one checkpoint or Encoder.

python -m eval.run --checkpoint CK --suite eval/suites/NAME.yaml [--out DIR] [--model NAME] \
    [--batch-size 64] [--device cpu] [--precision fp32|bf16] [--cache-dir DIR]
Writes DIR/results.json (list of CLIP_benchmark-shaped records) and DIR/results.md (table).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from eval.cli import add_checkpoint_args, load_from_args, run_cli, write_json
from eval.datasets import load_classification
from eval.encoder import Encoder
from eval.prompts import load_classnames, load_templates
from eval.retrieval import retrieval_record
from eval.suite import Suite, TaskSpec, load_suite
from eval.zeroshot import TASK as ZEROSHOT_TASK
from eval.zeroshot import build_classifier, evaluate_zeroshot

ClassifierKey = tuple[str, tuple[str, ...], tuple[str, ...]]
# Text classifiers of the most recent model id only: a training run evaluates step after step,
# and older steps' classifiers are never asked for again.
_classifier_cache: dict[ClassifierKey, torch.Tensor] = {}


def cached_classifier(encoder: Encoder, classnames: list[str], templates: list[str], *,
                      model_id: str | None, cache_dir: str | Path | None = None,
                      batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Classifier [D, C], reused per (model_id, classnames, templates); no caching without model_id."""
    if model_id is None:
        return build_classifier(encoder, classnames, templates, batch_size=batch_size, progress=progress)
    key = (model_id, tuple(classnames), tuple(templates))
    if key in _classifier_cache:
        return _classifier_cache[key]
    disk_path = None
    if cache_dir is not None:
        digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
        disk_path = Path(cache_dir) / f"classifier-{digest}.pt"
    if disk_path is not None and disk_path.is_file():
        classifier = torch.load(disk_path, map_location="cpu", weights_only=True)
    else:
        classifier = build_classifier(encoder, classnames, templates, batch_size=batch_size, progress=progress)
        if disk_path is not None:
            disk_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(classifier.cpu(), disk_path)
    for stale in [k for k in _classifier_cache if k[0] != model_id]:
        del _classifier_cache[stale]
    _classifier_cache[key] = classifier
    return classifier


def run_task(encoder: Encoder, task: TaskSpec, *, device: str | torch.device, batch_size: int,
             model: str, pretrained: str, model_id: str | None, cache_dir: str | Path | None,
             progress: bool) -> dict:
    """One CLIP_benchmark-shaped record for one suite task."""
    common = {"dataset": task.name, "model": model, "pretrained": pretrained}
    if task.task == "retrieval":
        record = retrieval_record(encoder, task.data, split=task.split, image_root=task.image_root,
                                  batch_size=batch_size, device=device, max_samples=task.max_samples,
                                  progress=progress)
        return {**record, **common, "data": task.data}
    names = load_classnames(task.classnames) if task.classnames is not None else None
    dataset = load_classification(task.data, names, task.split)
    classifier = cached_classifier(encoder, dataset.classnames, load_templates(task.templates),
                                   model_id=model_id, cache_dir=cache_dir, batch_size=max(batch_size, 256),
                                   progress=progress)
    result = evaluate_zeroshot(encoder, dataset, classifier, batch_size=batch_size, device=device,
                               max_samples=task.max_samples, progress=progress)
    return {**common, "task": ZEROSHOT_TASK, "data": task.data, **result}


def run_suite(encoder: Encoder, suite: Suite | str | Path, *, device: str | torch.device = "cpu",
              batch_size: int = 64, model: str = "", pretrained: str = "", model_id: str | None = None,
              cache_dir: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Evaluate every task of `suite` with any `Encoder`; returns one record per task.

    `model_id` identifies the weights (e.g. "run-name/step_00000100"): text classifiers are cached
    per (model_id, classnames, templates) in memory, and also under `cache_dir` when given.
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    return [run_task(encoder, task, device=device, batch_size=batch_size, model=model, pretrained=pretrained,
                     model_id=model_id, cache_dir=cache_dir, progress=progress) for task in suite.tasks]


def headline_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4f}" for name, value in metrics.items())


def markdown_table(records: list[dict]) -> str:
    """One row per task: name, task, images, skipped, metrics."""
    lines = ["| dataset | task | images | skipped | metrics |", "| --- | --- | --- | --- | --- |"]
    for record in records:
        lines.append(f"| {record['dataset']} | {record['task']} | {record['num_samples']} | "
                     f"{record['skipped']} | {headline_metrics(record['metrics'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.splitlines()[0])
    add_checkpoint_args(parser)
    parser.add_argument("--suite", required=True, help="suite YAML, e.g. eval/suites/shared-data.yaml")
    parser.add_argument("--out", default=None, help="output folder (default runs/eval/<suite name>)")
    parser.add_argument("--cache-dir", default=None, help="also cache text classifiers on disk here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    suite = load_suite(args.suite)  # validate before the (slower) model load
    encoder = load_from_args(args)
    records = run_suite(encoder, suite, device=args.device, batch_size=args.batch_size, model=encoder.name,
                        pretrained=args.checkpoint, model_id=str(Path(args.checkpoint).resolve()),
                        cache_dir=args.cache_dir)
    out = Path(args.out or Path("runs") / "eval" / suite.name)
    write_json(out / "results.json", records)
    table = markdown_table(records)
    (out / "results.md").write_text(table)
    print(table + f"\nwrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    run_cli(main)
