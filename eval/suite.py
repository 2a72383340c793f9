"""Suite files: a YAML list of evaluation tasks, validated with one-line errors.

    tasks:
      - name: cifar10            # unique, used as the record's "dataset"
        task: zeroshot           # zeroshot | retrieval
        data: ../shared/data/cifar10-test-2k
        classnames: cifar10      # zeroshot only: built-in name, .txt/.json file, or inline list
        templates: cifar10       # zeroshot only: built-in name, .txt/.json file, or inline list
        split: val               # shard dirs only (train | val)
        image_root: DIR          # retrieval on a COCO .json only
        max_samples: 500         # first N images only

Relative paths (data, classnames/templates files, image_root) are resolved against the current
working directory, which is the repository root for every documented command.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TASK_KINDS = ("zeroshot", "retrieval")
SPLITS = ("train", "val")
ALLOWED_KEYS = {"name", "task", "data", "classnames", "templates", "split", "image_root", "max_samples"}


@dataclass
class TaskSpec:
    """One evaluation task; `__post_init__` raises ValueError("<key>: <problem>; <fix>")."""

    name: str
    task: str
    data: str | list[str]
    classnames: str | list[str] | None = None
    templates: str | list[str] | None = None
    split: str | None = None
    image_root: str | None = None
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name: must be a non-empty string; name every task")
        if self.task not in TASK_KINDS:
            raise ValueError(f"task: {self.task!r} is unknown; use one of {', '.join(TASK_KINDS)}")
        if not isinstance(self.data, (str, list)) or not self.data:
            raise ValueError("data: missing or empty; give a dataset path or shard spec")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split: {self.split!r} is unknown; use one of {', '.join(SPLITS)}")
        if self.task == "retrieval" and (self.classnames is not None or self.templates is not None):
            raise ValueError("classnames: only zeroshot tasks take classnames/templates; remove them")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise ValueError(f"max_samples: {self.max_samples!r} is not a positive integer")
        for key in ("classnames", "templates"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, (str, list)):
                raise ValueError(f"{key}: must be a name, a file path or a list of strings")


@dataclass
class Suite:
    path: str
    tasks: list[TaskSpec]

    @property
    def name(self) -> str:
        return Path(self.path).stem


def parse_task(raw: Any, index: int, source: str) -> TaskSpec:
    label = f"{source}: tasks[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{label}: must be a mapping with name, task, data")
    label = f"{label} ({raw.get('name', '?')})"
    unknown = sorted(set(raw) - ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"{label}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(ALLOWED_KEYS))}")
    for key in ("name", "task", "data"):
        if key not in raw:
            raise ValueError(f"{label}.{key}: missing; every task needs name, task and data")
    try:
        return TaskSpec(**raw)
    except ValueError as err:
        # The dataclass names the key first; prefix where it is.
        raise ValueError(f"{label}.{err}") from None


def parse_suite(raw: Any, source: str) -> Suite:
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list) or not raw["tasks"]:
        raise ValueError(f"{source}: needs a non-empty 'tasks:' list")
    tasks = [parse_task(item, i, source) for i, item in enumerate(raw["tasks"])]
    names = [task.name for task in tasks]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise ValueError(f"{source}: task name {duplicate!r} appears twice; names must be unique")
    return Suite(path=source, tasks=tasks)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite not found: {path}; see eval/suites/*.yaml")
    with path.open() as handle:
        return parse_suite(yaml.safe_load(handle), str(path))
