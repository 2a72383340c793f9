"""Readers for the shard builder's inputs: caption tables, image folders and existing shards.

Each reader yields ``SourceRow``s (one image reference with raw captions); ``collect_samples``
merges rows that name the same image (or key), cleans captions and assigns stable keys.
Images are only referenced here; they are read and decoded later in worker processes.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import itertools
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from clip_pretrain.data.specs import expand_pattern, has_range, input_tars

KINDS = ("jsonl", "csv", "parquet", "folder", "shards")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUTO_CAPTION_COLUMNS = ("captions", "caption", "text", "txt")
MAX_METADATA_BYTES = 2**20  # a txt/json member larger than this in an input shard is not read
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

    def byte_size(self) -> int:
        """Size of the image in bytes without reading it; raises OSError when the file is gone."""
        return os.path.getsize(self.path) if self.offset < 0 else self.size

    def describe(self) -> str:
        return self.path if self.offset < 0 else f"{self.path}@{self.offset}"


@dataclass(frozen=True)
class Columns:
    """Column (or JSON field) names; ``caption=None`` picks the first of AUTO_CAPTION_COLUMNS.

    ``image_root``: the folder every image must lie in once symlinks and ``..`` are resolved
    (default: the table's folder, or the image folder itself); others are skipped as outside_root.
    """

    image: str = "image"
    caption: str | None = None
    label: str | None = None
    key: str | None = None
    image_root: str | None = None


@dataclass
class SourceRow:
    """One row of an input: ``group`` identifies the sample rows are merged into."""

    group: str
    key_hint: str
    image: ImageRef | None
    captions: list[str]
    label: str | None = None
    meta: dict | None = None  # an input shard's per-sample json (img2dataset: url, sha256, exif, status...)


@dataclass
class Sample:
    """A merged, cleaned sample ready for image processing."""

    key: str
    image: ImageRef
    captions: list[str]
    label: str | None = None
    meta: dict | None = None


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
    if has_range(path):
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
    if has_range(path):
        missing = [p for p in expand_pattern(path, f"--input {path}") if not os.path.exists(p)]
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


def _image_root(columns: Columns, default: Path) -> Path:
    return Path(columns.image_root).resolve() if columns.image_root else default


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (already resolved: symlinks and ``..`` followed) lies in ``root``."""
    return path == root or root in path.parents


def _is_scalar(value: object) -> bool:
    return value is None or (isinstance(value, (str, int)) and not isinstance(value, bool))


def _row_problem(record: dict, columns: Columns) -> str | None:
    """Why a record cannot be used (a skip reason), or None. Values of the wrong type would
    otherwise be turned into paths or captions with ``str()`` (a dict as a caption, say)."""
    for value in record.values():  # CSV: undecodable bytes arrive as lone surrogates
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return "bad_encoding"
    image_value = record.get(columns.image)
    if not isinstance(image_value, str) or not image_value.strip():
        return "bad_row"
    captions = record.get(columns.caption)
    if not (captions is None or isinstance(captions, str)
            or (isinstance(captions, (list, tuple)) and all(c is None or isinstance(c, str) for c in captions))):
        return "bad_row"
    if not all(_is_scalar(record.get(name)) for name in (columns.label, columns.key) if name):
        return "bad_row"
    return None


def _table_row(record: dict, columns: Columns, base: Path, root: Path, parse_json_list: bool) -> SourceRow | str:
    """A table record as a SourceRow, or the reason it is skipped (bad_row, bad_encoding, outside_root)."""
    problem = _row_problem(record, columns)
    if problem:
        return problem
    image_value = record[columns.image].strip()
    resolved = (base / image_value).resolve()  # follows symlinks: the file that would really be read
    if not _inside(resolved, root):
        return "outside_root"
    image_path = str(resolved)
    relative = os.path.splitext(image_value)[0]
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


def _table_rows(records: Iterable[dict], columns: Columns, base: Path, root: Path, parse_json_list: bool,
                skipped: Counter) -> Iterator[SourceRow]:
    """The SourceRows of a table's records; a record that cannot be one is counted by its reason."""
    for record in records:
        row = _table_row(record, columns, base, root, parse_json_list)
        if isinstance(row, str):
            skipped[row] += 1
        else:
            yield row


def _jsonl_records(handle: IO[bytes], skipped: Counter) -> Iterator[dict]:
    """One dict per line; undecodable, non-JSON and non-object lines are counted, blank ones ignored."""
    for raw in handle:
        try:
            line = raw.decode("utf-8-sig")  # also drops a byte-order mark
        except UnicodeDecodeError:
            skipped["bad_encoding"] += 1
            continue
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
        yield record


def _read_jsonl(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    base = Path(path).resolve().parent
    with open(path, "rb") as handle:  # bytes: one undecodable row is skipped, not the whole file
        records = _jsonl_records(handle, skipped)
        first = next(records, None)
        if first is None:
            return
        resolved = _resolve_columns(list(first), columns, path)  # the first record names every row's columns
        yield from _table_rows(itertools.chain([first], records), resolved, base, _image_root(columns, base), False,
                               skipped)


def _read_csv(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    base = Path(path).resolve().parent
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    # utf-8-sig: Excel's byte-order mark would otherwise glue itself to the first column's name;
    # surrogateescape: an undecodable row is skipped as bad_encoding instead of ending the build.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        resolved = _resolve_columns(list(reader.fieldnames or []), columns, path)
        yield from _table_rows(reader, resolved, base, _image_root(columns, base), True, skipped)


def _check_parquet_types(schema: Any, columns: Columns, path: str) -> None:
    """Refuses columns whose Arrow type cannot hold what they name (numbers as image paths...)."""
    import pyarrow as pa

    def stringy(kind: Any) -> bool:
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    def string_list(kind: Any) -> bool:
        return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and stringy(kind.value_type)

    expected = {
        "--image-column": (columns.image, stringy, "a string (an image path)"),
        "--caption-column": (columns.caption, lambda k: stringy(k) or string_list(k), "a string or a list of strings"),
        "--label-column": (columns.label, lambda k: stringy(k) or pa.types.is_integer(k), "a string or an integer"),
        "--key-column": (columns.key, lambda k: stringy(k) or pa.types.is_integer(k), "a string or an integer"),
    }
    for flag, (name, accepts, wanted) in expected.items():
        if name is not None and not accepts(schema.field(name).type):
            raise ValueError(f"{flag}: column '{name}' of {path} has type {schema.field(name).type}, "
                             f"expected {wanted}; convert the column or pass another {flag}")


def _read_parquet(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq  # optional heavy import, only for parquet inputs

    base = Path(path).resolve().parent
    root = _image_root(columns, base)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"--input {path}: not a readable Parquet file ({str(error).splitlines()[0][:120]}); "
                         "check the file or pass --input-kind") from None
    resolved = _resolve_columns(parquet.schema_arrow.names, columns, path)
    _check_parquet_types(parquet.schema_arrow, resolved, path)
    wanted = list(dict.fromkeys(n for n in (resolved.image, resolved.caption, resolved.label, resolved.key) if n))
    records = (record for batch in parquet.iter_batches(columns=wanted) for record in batch.to_pylist())
    yield from _table_rows(records, resolved, base, root, True, skipped)


def _read_folder(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    if columns.label or columns.key:
        raise ValueError(f"--input {path}: an image folder has no label/key columns; drop --label-column/--key-column")
    folder = Path(path).resolve()
    root = _image_root(columns, folder)
    for image_path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        real = image_path.resolve()
        if not _inside(real, root):  # a symlink to a file elsewhere: never read it
            skipped["outside_root"] += 1
            continue
        caption_path = image_path.with_suffix(".txt")
        captions = []
        if caption_path.is_file() and _inside(caption_path.resolve(), root):  # one caption per line
            captions = caption_path.read_text(encoding="utf-8", errors="replace").splitlines()
        relative = str(image_path.relative_to(folder).with_suffix(""))
        yield SourceRow(f"file:{image_path}", relative, ImageRef(str(real)), captions)


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
    return SourceRow(f"tar:{tar_path}::{key}", key, image, captions, None if label in (None, "") else str(label),
                     meta if isinstance(meta, dict) and meta else None)


def _read_shards(path: str, columns: Columns, skipped: Counter) -> Iterator[SourceRow]:
    for tar_path in input_tars(path, f"--input {path}"):
        if not os.path.isfile(tar_path):
            raise FileNotFoundError(f"--input {path}: shard {tar_path} not found; rebuild or fix the manifest")
        tar_path = str(Path(tar_path).resolve())
        groups: dict[str, tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]] = {}
        conflicts: set[str] = set()
        oversized: set[str] = set()
        try:
            with tarfile.open(tar_path, "r") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, extension = _split_member_name(member.name)
                    members, texts = groups.setdefault(key, ({}, {}))
                    if extension in members:  # the same member name twice: which one is meant is unknowable
                        conflicts.add(key)
                    members[extension] = member
                    if extension in ("txt", "json"):  # small metadata: read now, images later
                        if member.size > MAX_METADATA_BYTES:  # a caption of gigabytes: never loaded
                            oversized.add(key)
                            continue
                        texts[extension] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError):
            skipped["corrupt_shard"] += 1
        skipped["key_conflict"] += len(conflicts)
        skipped["too_large"] += len(oversized - conflicts)
        for key, (members, texts) in groups.items():
            if key not in conflicts and key not in oversized:
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
    conflicts: set[str] = set()  # one key naming two different images or labels
    for path in inputs:
        for row in read_rows(path, kind, columns, result.skipped):
            merged = groups.get(row.group)
            if merged is None:
                groups[row.group] = SourceRow(row.group, row.key_hint, row.image, list(row.captions), row.label, row.meta)
                continue
            if (row.image and merged.image and row.image != merged.image) or (
                    row.label and merged.label and row.label != merged.label):
                conflicts.add(row.group)
            result.counters["merged_rows"] += 1
            merged.captions.extend(row.captions)
            merged.image = merged.image or row.image
            merged.label = merged.label or row.label
            merged.meta = merged.meta or row.meta
    keys = _assign_keys(groups)
    for group, row in groups.items():
        if group in conflicts:
            result.skipped["key_conflict"] += 1
            continue
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
        result.samples.append(Sample(keys[group], row.image, captions, row.label, row.meta))
    result.samples.sort(key=lambda sample: sample.key)
    return result
