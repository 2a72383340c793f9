"""Evaluator registry: every module in this package is one task, named after its file.

A task module defines
    OPTIONS: frozenset[str]                      suite keys it accepts beyond name/task/data/split/...
    check(spec: TaskSpec) -> None                option validation, ValueError("<key>: ...; <fix>")
    run(spec: TaskSpec, ctx: TaskContext) -> dict
        returns {"metrics": {...}, "num_samples": int, "skipped": int, ...extras}
so a new evaluator is one file here; suites name it by its file name.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

ALIASES = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}
_INTERNAL = {"context"}


def available() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_") and info.name not in _INTERNAL)


def canonical(name: object) -> str:
    """The registered task name for `name` (aliases resolved); one-line error listing the tasks."""
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in available():
        raise ValueError(f"task: {name!r} is unknown; use one of {', '.join(available())} "
                         f"(or add a module to eval/tasks/)")
    return name


def get(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{canonical(name)}")
