"""Shared CLI plumbing: checkpoint arguments, one-line errors with exit status 2, JSON output."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from eval.checkpoints import LoadedModel, load_checkpoint


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="run dir, checkpoints/<tag> dir, export dir, or a .pt/.safetensors file")
    parser.add_argument("--model", default=None, help="open_clip config name (when no open_clip_config.json)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    parser.add_argument("--batch-size", type=int, default=64)


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
    return load_checkpoint(args.checkpoint, model_name=args.model, device=args.device, precision=args.precision)


def write_json(path: str | Path, payload: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run `main`; bad input becomes `error: ...` on stderr and exit status 2."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
