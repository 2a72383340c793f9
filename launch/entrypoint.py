"""The Docker image's entrypoint: map a subcommand to the command that runs it, then exec it.

    pretrain CONFIG [key=value ...]        launch/torchrun.sh (all GPUs, or 2 CPU workers), or
                                           `python -m clip_pretrain.pretrain.train` when already a rank
    eval [run|zeroshot|retrieval] ARGS     python -m clip_pretrain.eval.run (default) / .zeroshot / .retrieval
    data [build|demo] ARGS                 python -m clip_pretrain.data.build (default) / .demo
    demo ARGS                              python -m clip_pretrain.data.demo
    shell [ARGS]                           bash [ARGS]
    exec CMD [ARGS]                        CMD [ARGS], unchanged

`command_for` is pure (argv + environment in, argv out) so the dispatch is tested without Docker.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
USAGE = (
    "usage: ENTRYPOINT {pretrain CONFIG [key=value ...] | eval [run|zeroshot|retrieval] ARGS | "
    "data [build|demo] ARGS | demo ARGS | shell [ARGS] | exec CMD [ARGS]}"
)
EVAL_TOOLS = ("run", "zeroshot", "retrieval")
DATA_TOOLS = ("build", "demo")


def command_for(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The command line for `argv` (the container's arguments); ValueError with a one-line usage if unknown.

    environ: PYTHON (interpreter, default the one running this), APP_DIR (project root, default this checkout),
    PRETRAIN_LAUNCHER ("torchrun" or "python"; default torchrun unless RANK and WORLD_SIZE are
    already set, i.e. an outer launcher made this process one rank).
    """
    if not argv:
        raise ValueError(f"no subcommand given; {USAGE}")
    subcommand, args = argv[0], list(argv[1:])
    python = environ.get("PYTHON", sys.executable)
    if subcommand == "pretrain":
        return _pretrain(args, environ, python)
    if subcommand == "eval":
        tool, rest = _pick_tool(args, EVAL_TOOLS)
        return [python, "-m", f"clip_pretrain.eval.{tool}", *rest]
    if subcommand == "data":
        tool, rest = _pick_tool(args, DATA_TOOLS)
        return [python, "-m", f"clip_pretrain.data.{tool}", *rest]
    if subcommand == "demo":
        return [python, "-m", "clip_pretrain.data.demo", *args]
    if subcommand == "shell":
        return ["bash", *args]
    if subcommand == "exec":
        if not args:
            raise ValueError(f"exec needs a command, e.g. `exec nvidia-smi`; {USAGE}")
        return args
    raise ValueError(f"unknown subcommand {subcommand!r}; {USAGE}")


def _pretrain(args: list[str], environ: Mapping[str, str], python: str) -> list[str]:
    if not args or "=" in args[0] or args[0].startswith("-"):
        raise ValueError(f"pretrain needs a config first, e.g. `pretrain pretrain/configs/NAME.yaml`; {USAGE}")
    config, overrides = args[0], args[1:]
    already_a_rank = "RANK" in environ and "WORLD_SIZE" in environ
    launcher = environ.get("PRETRAIN_LAUNCHER") or ("python" if already_a_rank else "torchrun")
    if launcher == "python":
        return [python, "-m", "clip_pretrain.pretrain.train", "--config", config, *overrides]
    if launcher == "torchrun":
        app_dir = environ.get("APP_DIR") or str(APP_DIR)
        return ["bash", f"{app_dir}/launch/torchrun.sh", config, *overrides]
    raise ValueError(f"PRETRAIN_LAUNCHER: unknown {launcher!r}; use torchrun or python")


def _pick_tool(args: list[str], tools: Sequence[str]) -> tuple[str, list[str]]:
    """`eval zeroshot --x` -> ("zeroshot", ["--x"]); without a tool name the first tool is the default."""
    if args and args[0] in tools:
        return args[0], args[1:]
    return tools[0], args


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    try:
        command = command_for(args, os.environ)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # exec, not subprocess: the command becomes this process and receives the container's signals.
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
