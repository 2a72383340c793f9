"""Suite files: a YAML list of evaluation tasks, validated with one-line errors.

    tasks:
      - name: cifar10            # unique, used as the record's "dataset"
        task: zeroshot_classification   # any module in eval/tasks/ (aliases: zeroshot, retrieval)
        data: ../shared/data/cifar10-test-2k
        split: val               # sources with splits only (shard dirs, CLIP_benchmark layout)
        max_samples: 500         # first N images only
        language: en             # CLIP_benchmark's field; recorded, prompts are not translated
        classnames: cifar10      # task options: each task module lists its own in OPTIONS
        templates: cifar10

Relative paths (data, classnames/templates files, image_root) are resolved against the current
working directory, which is the repository root for every documented command.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clip_pretrain.eval import tasks as registry

COMMON_KEYS = {"name", "task", "data", "split", "max_samples", "language"}


@dataclass
class TaskSpec:
    """One evaluation task; `__post_init__` raises ValueError("<key>: <problem>; <fix>")."""

    name: str
    task: str
    data: str | list[str]
    split: str | None = None
    max_samples: int | None = None
    language: str = "en"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name: must be a non-empty string; name every task")
        self.task = registry.canonical(self.task)
        if not isinstance(self.data, (str, list)) or not self.data:
            raise ValueError("data: missing or empty; give a dataset path or shard spec")
        if self.split is not None and (not isinstance(self.split, str) or not self.split or "/" in self.split):
            raise ValueError(f"split: {self.split!r} is not a split name such as val, test or train")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise ValueError(f"max_samples: {self.max_samples!r} is not a positive integer")
        module = registry.get(self.task)
        unknown = sorted(set(self.options) - set(module.OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(COMMON_KEYS | set(module.OPTIONS)))
            raise ValueError(f"{unknown[0]}: not an option of {self.task}; allowed: {allowed}")
        module.check(self)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


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
    for key in ("name", "task", "data"):
        if key not in raw:
            raise ValueError(f"{label}.{key}: missing; every task needs name, task and data")
    common = {key: value for key, value in raw.items() if key in COMMON_KEYS}
    options = {key: value for key, value in raw.items() if key not in COMMON_KEYS}
    try:
        return TaskSpec(**common, options=options)
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
