"""Class names and prompt templates: built-in sets by name, or custom ones from .txt / .json files."""
from __future__ import annotations

import json
from pathlib import Path

from open_clip import zero_shot_metadata

HERE = Path(__file__).resolve().parent


def _openai_templates() -> list[str]:
    # open_clip stores OpenAI's 80 ImageNet templates as lambdas; calling one with "{}" recovers
    # its format string, so the list is reused rather than copied by hand.
    return [template("{}") for template in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]


BUILTIN_CLASSNAMES = {
    "imagenet1k": lambda: list(zero_shot_metadata.IMAGENET_CLASSNAMES),
    "cifar10": lambda: read_text_list(HERE / "classnames" / "cifar10.txt"),
    "cifar100": lambda: read_text_list(HERE / "classnames" / "cifar100.txt"),
}
BUILTIN_TEMPLATES = {
    "openai": _openai_templates,
    "imagenet1k": _openai_templates,
    "simple": lambda: [template("{}") for template in zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES],
    "cifar10": lambda: read_text_list(HERE / "templates" / "cifar.txt"),
    "cifar100": lambda: read_text_list(HERE / "templates" / "cifar.txt"),
}
DEFAULT_TEMPLATES = "openai"


def read_text_list(path: str | Path) -> list[str]:
    """Strings from a .json list or a text file with one entry per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}; give a .txt (one per line) or .json list")
    if path.suffix == ".json":
        items = json.loads(path.read_text())
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"{path}: expected a JSON list of strings")
    else:
        items = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not items:
        raise ValueError(f"{path}: is empty; it needs at least one entry")
    return items


def load_classnames(spec: str | list[str]) -> list[str]:
    """A built-in name (imagenet1k, cifar10, cifar100), a file path, or a list given inline."""
    if isinstance(spec, list):
        return [str(item) for item in spec]
    if spec in BUILTIN_CLASSNAMES:
        return BUILTIN_CLASSNAMES[spec]()
    return read_text_list(spec)


def load_templates(spec: str | list[str] | None) -> list[str]:
    """Templates with a `{}` (or `{c}`) slot for the class name; default OpenAI's 80."""
    if spec is None:
        spec = DEFAULT_TEMPLATES
    if isinstance(spec, list):
        templates = [str(item) for item in spec]
    elif spec in BUILTIN_TEMPLATES:
        templates = BUILTIN_TEMPLATES[spec]()
    else:
        templates = read_text_list(spec)
    for template in templates:
        if "{}" not in template and "{c}" not in template:
            raise ValueError(f"template {template!r} (from {spec}) has no '{{}}' slot for the class name")
    return templates


def fill_template(template: str, classname: str) -> str:
    return template.format(classname, c=classname)
