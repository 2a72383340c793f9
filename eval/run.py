"""Run an evaluation suite (any tasks from eval/tasks/) on one checkpoint or Encoder.

python -m clip_pretrain.eval.run --checkpoint CK --suite eval/suites/NAME.yaml [--out DIR] [--model NAME] \
    [--batch-size 64] [--workers N] [--device cuda|cpu] [--precision fp32|bf16] [--cache-dir DIR]
torchrun --nproc-per-node N -m clip_pretrain.eval.run ...   (images and texts sharded over ranks, same metrics)

Writes, in DIR: one CLIP_benchmark JSON per task ({dataset}_{pretrained}_{model}_{language}_{task}.json),
results.json (our records: those keys plus counts, split, images/s) and results.md (table).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from clip_pretrain.common.cli import prog_name
from clip_pretrain.eval import tasks
from clip_pretrain.eval.cli import add_checkpoint_args, load_from_args, run_cli, setup_ranks
from clip_pretrain.eval.distributed import shutdown
from clip_pretrain.eval.encoder import Encoder
from clip_pretrain.eval.results import markdown_table, write_benchmark_files, write_json
from clip_pretrain.eval.suite import Suite, TaskSpec, load_suite
from clip_pretrain.eval.tasks.context import TaskContext


def run_task(spec: TaskSpec, ctx: TaskContext, *, model: str = "", pretrained: str = "") -> dict:
    """One record: CLIP_benchmark's keys (dataset, model, pretrained, task, metrics, language) + extras."""
    result = tasks.get(spec.task).run(spec, ctx)
    return {"dataset": spec.name, "model": model, "pretrained": pretrained, "task": spec.task,
            "metrics": result.pop("metrics"), "language": spec.language, "data": spec.data, **result}


def run_suite(encoder: Encoder, suite: Suite | str | Path, *, device: str | torch.device = "cpu",
              batch_size: int = 64, workers: int = 0, model: str = "", pretrained: str = "",
              model_id: str | None = None, cache_dir: str | Path | None = None, progress: bool = True,
              notes: list[str] | None = None) -> list[dict]:
    """Evaluate every task of `suite` with any `Encoder`; returns one record per task.

    `model_id` identifies the weights (e.g. "run-name/step_00000100"): image features per dataset
    and text classifiers are cached per model_id in memory, and also under `cache_dir` when given.
    Under torch.distributed every rank must call this; all ranks return the same records.
    Lines worth printing (a split read by default) are appended to `notes`.
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    ctx = TaskContext(encoder, device=device, batch_size=batch_size, workers=workers, model_id=model_id,
                      cache_dir=cache_dir, progress=progress)
    records = [run_task(spec, ctx, model=model, pretrained=pretrained) for spec in suite.tasks]
    if notes is not None:
        notes.extend(ctx.notes)
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.eval.run"), description=__doc__.splitlines()[0])
    add_checkpoint_args(parser)
    parser.add_argument("--suite", required=True, help="suite YAML, e.g. eval/suites/shared-data.yaml")
    parser.add_argument("--out", default=None, help="output folder (default runs/eval/<suite name>)")
    parser.add_argument("--cache-dir", default=None, help="also cache image features and classifiers on disk here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    suite = load_suite(args.suite)  # validate before the (slower) model load
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; --out names the folder for results.json, results.md "
                         "and the per-task JSON files")
    ranks = setup_ranks(args)
    encoder = load_from_args(args)
    notes: list[str] = []
    records = run_suite(encoder, suite, device=args.device, batch_size=args.batch_size, workers=args.workers,
                        model=encoder.name, pretrained=args.checkpoint,
                        model_id=str(Path(args.checkpoint).resolve()), cache_dir=args.cache_dir, notes=notes)
    shutdown(ranks)
    if not ranks.is_main:
        return
    out = Path(args.out or Path("runs") / "eval" / suite.name)
    write_json(out / "results.json", records)
    write_benchmark_files(out, records)
    table = markdown_table(records)
    (out / "results.md").write_text(table)
    print("".join(f"note: {note}\n" for note in notes) + table
          + f"\nwrote {out}/results.md, results.json and one CLIP_benchmark JSON per task"
          + (f" ({ranks.world_size} processes)" if ranks.world_size > 1 else ""))


if __name__ == "__main__":
    run_cli(main)
