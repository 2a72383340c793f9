"""Readers for the shard builder's inputs: caption tables, image folders and existing shards.

Each reader yields ``SourceRow``s (one image reference with raw captions); ``collect_samples``
merges rows that name the same image (or key), cleans captions and assigns stable keys.
Images are only referenced here; they are read and decoded later in worker processes.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

KINDS = ("jsonl", "csv", "parquet", "folder", "shards")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUTO_CAPTION_COLUMNS = ("captions", "caption", "text", "txt")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes live: a whole file, or ``size`` bytes at ``offset`` inside a tar."""

    path: str
    offset: int = -1
    size: int = -1

    def read(self) -> bytes:
        """The raw bytes; raises FileNotFoundError when the file is gone."""
        with open(self.path, "rb") as handle:
            if self.offset < 0:
                return handle.read()
            handle.seek(self.offset)
            return handle.read(self.size)

    def describe(self) -> str:
        return self.path if self.offset < 0 else f"{self.path}@{self.offset}"


@dataclass(frozen=True)
class Columns:
    """Column (or JSON field) names; ``caption=None`` picks the first of AUTO_CAPTION_COLUMNS."""

    image: str = "image"
    caption: str | None = None
    label: str | None = None
    key: str | None = None


@dataclass
class SourceRow:
    """One row of an input: ``group`` identifies the sample rows are merged into."""

    group: str
    key_hint: str
    image: ImageRef | None
    captions: list[str]
    label: str | None = None


@dataclass
class Sample:
    """A merged, cleaned sample ready for image processing."""

    key: str
    image: ImageRef
    captions: list[str]
    label: str | None = None


@dataclass
class CollectResult:
    samples: list[Sample]
    skipped: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)


def sanitize_key(text: str) -> str:
    """A webdataset-safe key: no dots or slashes (webdataset splits names at the first dot)."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_") or "sample"


def detect_kind(path: str) -> str:
    """Input kind from the path: a table by suffix, a brace pattern/.tar/dir of tars, or a folder."""
    if "{" in path and ".." in path:
        return "shards"
    lower = path.lower()
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".tar"):
        return "shards"
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "manifest.json")) or glob.glob(os.path.join(path, "*.tar")):
            return "shards"
        return "folder"
    raise ValueError(f"--input {path}: cannot tell its kind from the name; pass --input-kind one of {', '.join(KINDS)}")


def check_input_exists(path: str) -> None:
    if "{" in path and ".." in path:
        missing = [p for p in braceexpand.braceexpand(path) if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"--input {path}: shard {missing[0]} not found; check the pattern")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"--input {path}: no such file or directory; check the path")


def _as_caption_list(value: object, parse_json_list: bool) -> list[str]:
    """A caption cell as a list: a string, a list of strings, or (CSV) a JSON-encoded list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value if item is not None]
    text = str(value)
    if parse_json_list and text.lstrip().startswith("[") and text.rstrip().endswith("]"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return [text]
        if isinstance(parsed, list):
            return [str(item) for item in parsed if item is not None]
    return [text]


def _resolve_columns(available: list[str], columns: Columns, source: str) -> Columns:
    """Fill the auto caption column and check every named column exists."""
    caption = columns.caption
    if caption is None:
        caption = next((name for name in AUTO_CAPTION_COLUMNS if name in available), None)
        if caption is None:
            raise ValueError(f"{source}: no caption column (columns: {', '.join(available)}); pass --caption-column")
    flags = {"--image-column": columns.image, "--caption-column": caption,
             "--label-column": columns.label, "--key-column": columns.key}
    for flag, name in flags.items():
        if name is not None and name not in available:
            raise ValueError(f"{flag}: column '{name}' not in {source} (columns: {', '.join(available)}); "
                             "pass an existing column")
    return Columns(columns.image, caption, columns.label, columns.key)


def _table_row(record: dict, columns: Columns, base: Path, parse_json_list: bool) -> SourceRow | None:
    """A table record as a SourceRow; None when the record lacks its image field."""
    image_value = record.get(columns.image)
    if image_value is None or str(image_value).strip() == "":
        return None
    image_path = str((base / str(image_value).strip()).resolve())
    relative = os.path.splitext(str(image_value).strip())[0]
    key_value = record.get(columns.key) if columns.key else None
    group = f"key:{key_value}" if key_value not in (None, "") else f"file:{image_path}"
    label = record.get(columns.label) if columns.label else None
    return SourceRow(
        group=group,
        key_hint=str(key_value) if key_value not in (None, "") else relative,
        image=ImageRef(image_path),
        captions=_as_caption_list(record.get(columns.caption), parse_json_list),
        label=None if label in (None, "") else str(label),
    )


def _read_jsonl(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    base = Path(path).resolve().parent
    resolved: Columns | None = None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped["bad_row"] += 1
                continue
            if not isinstance(record, dict):
                skipped["bad_row"] += 1
                continue
            if resolved is None:  # the first record names the columns every row should have
                resolved = _resolve_columns(list(record), columns, path)
            row = _table_row(record, resolved, base, parse_json_list=False)
            if row is None:
                skipped["bad_row"] += 1
                continue
            yield row


def _read_csv(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    base = Path(path).resolve().parent
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        resolved = _resolve_columns(list(reader.fieldnames or []), columns, path)
        for record in reader:
            row = _table_row(record, resolved, base, parse_json_list=True)
            if row is None:
                skipped["bad_row"] += 1
                continue
            yield row


def _read_parquet(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq  # optional heavy import, only for parquet inputs

    base = Path(path).resolve().parent
    parquet = pq.ParquetFile(path)
    resolved = _resolve_columns(parquet.schema_arrow.names, columns, path)
    wanted = list(dict.fromkeys(n for n in (resolved.image, resolved.caption, resolved.label, resolved.key) if n))
    for batch in parquet.iter_batches(columns=wanted):
        for record in batch.to_pylist():
            row = _table_row(record, resolved, base, parse_json_list=True)
            if row is None:
                skipped["bad_row"] += 1
                continue
            yield row


def _read_folder(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    if columns.label or columns.key:
        raise ValueError(f"--input {path}: an image folder has no label/key columns; drop --label-column/--key-column")
    root = Path(path).resolve()
    for image_path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        caption_path = image_path.with_suffix(".txt")
        captions = []
        if caption_path.is_file():  # one caption per line
            captions = caption_path.read_text(encoding="utf-8", errors="replace").splitlines()
        relative = str(image_path.relative_to(root).with_suffix(""))
        yield SourceRow(f"file:{image_path}", relative, ImageRef(str(image_path)), captions)


def shard_files(path: str) -> list[str]:
    """Tar files of a shard input: a .tar, a brace pattern, or a directory (manifest.json first)."""
    if "{" in path and ".." in path:
        return list(braceexpand.braceexpand(path))
    if os.path.isdir(path):
        manifest = os.path.join(path, "manifest.json")
        if os.path.isfile(manifest):
            with open(manifest, encoding="utf-8") as handle:
                return [os.path.join(path, shard["file"]) for shard in json.load(handle)["shards"]]
        return sorted(glob.glob(os.path.join(path, "*.tar")))
    return [path]


def _split_member_name(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the basename; the rest is the field."""
    directory, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(directory, stem), extension.lower()


def _shard_row(tar_path: str, key: str, members: dict[str, tarfile.TarInfo], texts: dict[str, bytes],
               columns: Columns) -> SourceRow:
    image_member = next((members[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in members), None)
    meta: dict = {}
    if "json" in texts:
        try:
            meta = json.loads(texts["json"])
        except json.JSONDecodeError:
            meta = {}
    caption_field = columns.caption or "captions"
    captions = _as_caption_list(meta.get(caption_field), parse_json_list=False) if isinstance(meta, dict) else []
    if not captions and "txt" in texts:
        captions = [texts["txt"].decode("utf-8", errors="replace")]
    if not captions and isinstance(meta, dict):
        captions = _as_caption_list(meta.get("caption"), parse_json_list=False)
    label = meta.get(columns.label) if columns.label and isinstance(meta, dict) else None
    image = ImageRef(tar_path, image_member.offset_data, image_member.size) if image_member else None
    return SourceRow(f"tar:{tar_path}::{key}", key, image, captions, None if label in (None, "") else str(label))


def _read_shards(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    for tar_path in shard_files(path):
        if not os.path.isfile(tar_path):
            raise FileNotFoundError(f"--input {path}: shard {tar_path} not found; rebuild or fix the manifest")
        tar_path = str(Path(tar_path).resolve())
        groups: dict[str, tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]] = {}
        try:
            with tarfile.open(tar_path, "r") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, extension = _split_member_name(member.name)
                    members, texts = groups.setdefault(key, ({}, {}))
                    members[extension] = member
                    if extension in ("txt", "json"):  # small metadata: read now, images later
                        texts[extension] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError):
            skipped["corrupt_shard"] += 1
        for key, (members, texts) in groups.items():
            yield _shard_row(tar_path, key, members, texts, columns)


_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet,
            "folder": _read_folder, "shards": _read_shards}


def read_rows(path: str, kind: str | None, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    """Rows of one input; ``kind=None`` auto-detects it from the path."""
    check_input_exists(path)
    kind = kind or detect_kind(path)
    if kind not in _READERS:
        raise ValueError(f"--input-kind: unknown kind '{kind}'; use one of {', '.join(KINDS)}")
    return _READERS[kind](path, columns, skipped)


def clean_captions(captions: list[str], max_chars: int, counters: Counter) -> list[str]:
    """Strip, drop empty and de-duplicate captions; cap over-long ones at ``max_chars``."""
    cleaned: list[str] = []
    for caption in captions:
        text = " ".join(caption.split())  # also folds newlines/tabs inside a caption
        if not text:
            counters["empty_caption_dropped"] += 1
            continue
        if len(text) > max_chars:
            counters["truncated_caption"] += 1
            text = text[:max_chars].rstrip()
        if text not in cleaned:
            cleaned.append(text)
    return cleaned


def _assign_keys(groups: dict[str, SourceRow]) -> dict[str, str]:
    """Stable keys per group; keys that collide after sanitising get a hash suffix."""
    proposed = {group: sanitize_key(row.key_hint) for group, row in groups.items()}
    counts = Counter(proposed.values())
    return {
        group: key if counts[key] == 1 else f"{key}_{hashlib.blake2b(group.encode(), digest_size=4).hexdigest()}"
        for group, key in proposed.items()
    }


def collect_samples(inputs: list[str], kind: str | None, columns: Columns, max_caption_chars: int) -> CollectResult:
    """Read every input, merge repeated rows, clean captions and return samples sorted by key."""
    for path in inputs:  # fail fast, before reading anything large
        check_input_exists(path)
    result = CollectResult(samples=[])
    groups: dict[str, SourceRow] = {}
    for path in inputs:
        for row in read_rows(path, kind, columns, result.skipped):
            merged = groups.get(row.group)
            if merged is None:
                groups[row.group] = SourceRow(row.group, row.key_hint, row.image, list(row.captions), row.label)
                continue
            result.counters["merged_rows"] += 1
            merged.captions.extend(row.captions)
            merged.image = merged.image or row.image
            merged.label = merged.label or row.label
    keys = _assign_keys(groups)
    for group, row in groups.items():
        if row.image is None:
            result.skipped["missing_file"] += 1
            continue
        captions = clean_captions(row.captions, max_caption_chars, result.counters)
        if not captions:
            result.skipped["empty_caption"] += 1
            continue
        if columns.label and row.label is None:
            result.skipped["missing_label"] += 1
            continue
        result.samples.append(Sample(keys[group], row.image, captions, row.label))
    result.samples.sort(key=lambda sample: sample.key)
    return result
