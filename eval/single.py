"""One task from the command line (eval.zeroshot, eval.retrieval, eval.linear_probe share this)."""
from __future__ import annotations

import argparse
from pathlib import Path

from clip_pretrain.common.cli import prog_name
from clip_pretrain.eval.cli import add_checkpoint_args, load_from_args, setup_ranks
from clip_pretrain.eval.distributed import shutdown
from clip_pretrain.eval.results import DEFAULT_NAME, benchmark_file_name, benchmark_json, format_metrics, write_json
from clip_pretrain.eval.suite import TaskSpec


def parse_args(module: str, doc: str, argv: list[str] | None,
               options: list[tuple[str, str] | tuple[str, str, type]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog_name(module), description=doc.splitlines()[0])
    add_checkpoint_args(parser)
    parser.add_argument("--data", required=True, help="dataset path or shard spec (see the module doc)")
    parser.add_argument("--out", default=None, help=f"results JSON (default: CLIP_benchmark's {DEFAULT_NAME})")
    parser.add_argument("--name", default=None, help="the record's dataset name (default: --data)")
    parser.add_argument("--split", default=None, help="split of a source with splits (default val, or test)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--language", default="en", help="CLIP_benchmark's language field")
    for flag, help_text, *kind in options:
        parser.add_argument(flag, default=None, help=help_text, type=kind[0] if kind else str)
    return parser.parse_args(argv)


def single_task_main(task: str, module: str, doc: str, argv: list[str] | None,
                     options: list[tuple[str, str] | tuple[str, str, type]]) -> dict:
    from clip_pretrain.eval.run import run_task
    from clip_pretrain.eval.tasks.context import TaskContext

    args = parse_args(module, doc, argv, options)
    if args.out and Path(args.out).is_dir():  # found out before the evaluation, not after it
        raise ValueError(f"--out {args.out} is a directory; give a file name such as {Path(args.out) / DEFAULT_NAME}")
    names = [flag.lstrip("-").replace("-", "_") for flag, *_ in options]
    spec = TaskSpec(name=args.name or args.data, task=task, data=args.data, split=args.split,
                    max_samples=args.max_samples, language=args.language,
                    options={name: getattr(args, name) for name in names if getattr(args, name) is not None})
    ranks = setup_ranks(args)
    encoder = load_from_args(args)
    ctx = TaskContext(encoder, device=args.device, batch_size=args.batch_size, workers=args.workers)
    record = run_task(spec, ctx, model=encoder.name, pretrained=args.checkpoint)
    shutdown(ranks)
    if ranks.is_main:
        out = Path(args.out or benchmark_file_name(record))
        write_json(out, benchmark_json(record))
        for note in ctx.notes:
            print(f"note: {note}")
        print(f"{record['dataset']}: {format_metrics(record['metrics'])} ({record['num_samples']} images, "
              f"{record['skipped']} skipped, split {record.get('split') or '-'}) -> {out}")
    return record
