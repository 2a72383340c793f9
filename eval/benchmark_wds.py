"""CLIP_benchmark's webdataset evaluation layout, read from a local folder (nothing downloaded).

    DIR/classnames.txt                              one class name per line (classification)
    DIR/zeroshot_classification_templates.txt       one template per line, `{c}` for the class
    DIR/<split>/nshards.txt                         N
    DIR/<split>/{0..N-1}.tar                        samples: webp|png|jpg + cls, or + txt (captions, one per line)
"""
from __future__ import annotations

from pathlib import Path

NSHARDS = "nshards.txt"
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"


def is_layout(folder: Path) -> bool:
    return folder.is_dir() and any((sub / NSHARDS).is_file() for sub in folder.iterdir() if sub.is_dir())


def splits(folder: Path) -> list[str]:
    return sorted(sub.name for sub in folder.iterdir() if (sub / NSHARDS).is_file())


def urls(folder: Path, split: str) -> list[str]:
    """The split's tar files, checked to exist."""
    count_file = folder / split / NSHARDS
    text = count_file.read_text().strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{count_file}: expected a positive shard count, got {text[:20]!r}")
    tars = [folder / split / f"{index}.tar" for index in range(int(text))]
    missing = next((tar for tar in tars if not tar.is_file()), None)
    if missing is not None:
        raise FileNotFoundError(f"shard not found: {missing} ({count_file} says {text}); "
                                f"copy every shard or fix {NSHARDS}")
    return [str(tar) for tar in tars]


def _lines(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] or None


def classnames(folder: Path | None) -> list[str] | None:
    return _lines(folder / CLASSNAMES) if folder is not None else None


def templates(folder: Path | None) -> list[str] | None:
    return _lines(folder / TEMPLATES) if folder is not None else None
