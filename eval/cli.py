"""Shared CLI plumbing: checkpoint and speed arguments, torchrun setup, one-line errors (exit 2)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

import torch

from clip_pretrain.eval.checkpoints import LoadedModel, load_checkpoint
from clip_pretrain.eval.distributed import Ranks, init_from_env


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers() -> int:
    # One core stays with the main process, which runs the model (on CPU) or feeds the GPU.
    return min(8, (os.cpu_count() or 1) - 1)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="run dir, checkpoints/<tag> dir, export dir, or a .pt/.safetensors file")
    parser.add_argument("--model", default=None, help="open_clip config name (when no open_clip_config.json)")
    parser.add_argument("--device", default=default_device(),
                        help="cuda (default when CUDA is present; under torchrun cuda:LOCAL_RANK), cpu, cuda:1, ...")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16 = autocast around the towers; similarities stay fp32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="DataLoader worker processes decoding images (default min(8, CPUs - 1); 0: in the main process)")


def setup_ranks(args: argparse.Namespace) -> Ranks:
    """Start the process group under torchrun and give each rank its own GPU."""
    ranks = init_from_env(args.device)
    if args.device == "cuda" and ranks.world_size > 1:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return ranks


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers: must be >= 0, got {args.workers}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return load_checkpoint(args.checkpoint, model_name=args.model, device=args.device, precision=args.precision)


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run `main`; bad input becomes `error: ...` on stderr and exit status 2."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _console_script(module: str) -> Callable[[], None]:
    def entry() -> None:
        run_cli(importlib.import_module(f"clip_pretrain.eval.{module}").main)

    entry.__doc__ = f"Console script for python -m clip_pretrain.eval.{module} (see pyproject.toml)."
    return entry


# Imported when called: `eval.zeroshot` and friends import this module, not the other way round.
eval_run, zeroshot, retrieval, linear_probe, eval_bench = map(
    _console_script, ("run", "zeroshot", "retrieval", "linear_probe", "bench"))
