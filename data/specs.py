"""Shard specs -> shard lists: the one parser the training loader, eval and data.build share.

A *spec* is one of:
  - a folder written by data.build (manifest.json): ``DIR`` (the split asked for) or ``DIR::val``;
  - a folder written by img2dataset: ``NNNNN.tar`` + ``NNNNN_stats.json`` (+ ``NNNNN.parquet``),
    one unnamed split whose sample counts are the stats' "successes";
  - a brace pattern ``dir/x-{000000..000009}.tar`` or a single ``.tar`` path;
  - a ``pipe:CMD``, ``http(s)://`` or ``s3://`` URL, brace-expanded like a path (webdataset does too).
Local files are checked up front so that a typo fails at start-up with a one-line error, not
inside a DataLoader worker an hour later.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import braceexpand

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "manifest.json"
STATS_SUFFIX = "_stats.json"  # img2dataset's per-shard summary, beside NNNNN.tar
MAX_EXPANSION = 1_000_000  # shards one brace pattern may name (a typo like {0..999999999} would exhaust memory)
SPLIT_PREFERENCE = ("val", "test")  # read when a folder has several splits and none is named
UNSPLIT_ACCEPTS = (None, "train")  # an img2dataset folder is one training set: the loader asks for "train"
VERIFY_SHARDS = 256  # folders this long are checked shard by shard; longer ones at evenly spread shards
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}")


@dataclass(frozen=True)
class Shard:
    """One tar shard: a local path or a gopen URL; ``count`` = samples per the manifest/stats, if known."""

    url: str
    count: int | None = None


@dataclass(frozen=True)
class Source:
    """A group of shards drawn from with probability proportional to ``weight`` (resampled mode)."""

    spec: str
    shards: tuple[Shard, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class Resolved:
    """A resolved spec: its shards, the folder it names (class names, parquet metadata live there),
    the split read and, when that split was chosen by default, a note saying so."""

    shards: tuple[Shard, ...]
    folder: Path | None = None
    split: str | None = None
    note: str = ""


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def local_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


def split_suffix(spec: str) -> tuple[str, str | None]:
    """(spec without ``::SPLIT``, SPLIT) for a local folder; other specs are taken literally
    (a URL may contain ``::``)."""
    base, sep, suffix = spec.rpartition("::")
    if sep and not is_remote(base) and local_path(base).is_dir():
        return base, suffix
    return spec, None


def is_img2dataset(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*" + STATS_SUFFIX)) and any(folder.glob("*.tar"))


def looks_like_spec(spec: str) -> bool:
    """Whether ``spec`` names shards (as opposed to an image folder or a table)."""
    base, split = split_suffix(spec)
    folder = local_path(base)
    return (split is not None or base.endswith(".tar") or "{" in base or is_remote(base)
            or (folder / MANIFEST).is_file() or is_img2dataset(folder))


def has_range(path: str) -> bool:
    """Whether ``path`` holds a brace range (``{000..009}``): a pattern, not a file name."""
    return "{" in path and ".." in path


def brace_size_bound(pattern: str) -> int:
    """An upper bound on the names a brace pattern expands to (the product of its numeric ranges),
    computed without expanding it."""
    bound = 1
    for start, stop, step in _RANGE.findall(pattern):
        bound *= abs(int(stop) - int(start)) // max(abs(int(step or 1)), 1) + 1
    return bound


def expand_pattern(pattern: str, where: str | None = None) -> list[str]:
    """The names a brace pattern gives (the pattern itself when it has none), in order."""
    where = where or pattern
    if brace_size_bound(pattern) > MAX_EXPANSION:  # braceexpand builds a whole range before yielding any name
        raise ValueError(f"{where}: the brace pattern names more than {MAX_EXPANSION} shards; check its ranges")
    try:
        return list(braceexpand.braceexpand(pattern))
    except Exception as exn:  # braceexpand raises its own UnbalancedBracesError
        raise ValueError(f"{where}: bad brace pattern ({exn}); use e.g. dir/x-{{000000..000009}}.tar") from None


def pick_split(available: Sequence[str], named: str | None, where: str) -> tuple[str, str]:
    """The split to read and, when it was chosen by default, a note saying so (else "")."""
    if named is not None:
        if named not in available:
            raise ValueError(f"{where}: no split {named!r}; it has {', '.join(available) or 'none'}: "
                             f"name one of those with DIR::SPLIT or --split (it lists no {named!r} shards)")
        return named, ""
    if len(available) == 1:
        return available[0], ""
    chosen = next((name for name in SPLIT_PREFERENCE if name in available), None)
    if chosen is None:
        raise ValueError(f"{where}: has splits {', '.join(available) or 'none'} and none was named; "
                         f"pick one with DIR::SPLIT or --split")
    return chosen, (f"{where} has splits {', '.join(available)} and none was named: evaluating "
                    f"{chosen!r} (name one with DIR::SPLIT or --split)")


# ---------------------------------------------------------------- counts

def count_samples(path: Path) -> int:
    """Samples (distinct keys) in a tar, from its headers only (member data is skipped, not read)."""
    keys = set()
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if member.isfile():
                directory, base = os.path.split(member.name)
                keys.add(os.path.join(directory, base.split(".", 1)[0]))
    return len(keys)


def _check_counts(shards: Sequence[Shard], claims: dict[str, Path], spec: str) -> None:
    """The counts a manifest or a stats file claims must be what the tars hold: epoch sizes and the
    batch-size check are computed from them. Every shard is checked up to VERIFY_SHARDS, a spread
    of them beyond. ``claims``: the file each shard's count comes from."""
    step = max(1, len(shards) // VERIFY_SHARDS)
    for shard in shards[::step]:
        if shard.count is None:
            continue
        try:
            actual = count_samples(Path(shard.url))
        except (tarfile.TarError, OSError) as exn:
            raise ValueError(f"{spec}: shard {shard.url} is not a readable tar ({exn}); rebuild it with data.build") from None
        if actual != shard.count:
            raise ValueError(f"{spec}: {claims[shard.url]} says {Path(shard.url).name} holds {shard.count} samples, "
                             f"the tar holds {actual}; rebuild the shards with data.build or correct "
                             f"{claims[shard.url].name}")


# ---------------------------------------------------------------- data.build folders (manifest.json)

def _manifest_shard(directory: Path, entry: object, path: Path, spec: str) -> Shard:
    """One manifest entry as a Shard; its file must be a plain name inside ``directory``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise ValueError(f"{spec}: {path} has an entry without a file name ({entry!r:.80}); rebuild the shards with data.build")
    file, count = entry["file"], entry.get("count")
    if Path(file).name != file or file in ("", ".", ".."):  # a bare name: no "..", no absolute path
        raise ValueError(f"{spec}: {path} lists {file!r}, which is not a file in {directory}; "
                         "a manifest names shards beside it: fix the entry or rebuild the shards")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise ValueError(f"{spec}: {path} gives {file} the count {count!r}, not a whole number >= 0; rebuild the shards")
    return Shard(str(directory / file), count)


def manifest_entries(directory: Path, spec: str) -> list[dict]:
    """The shard entries of ``directory/manifest.json`` (each with a string "split")."""
    path = directory / MANIFEST
    try:
        entries = json.loads(path.read_text())["shards"]
        if not all(isinstance(e, dict) and isinstance(e["split"], str) for e in entries):
            raise TypeError("an entry without a split")
    except (ValueError, KeyError, TypeError) as exn:
        raise ValueError(f"{spec}: unreadable {path} ({exn!r}); rebuild the shards with data.build") from None
    return entries


def read_manifest(directory: Path, split: str | None, spec: str, check_counts: bool = True) -> list[Shard]:
    """Shards of ``split`` (None: every split) listed in ``directory/manifest.json``, in manifest order."""
    path = directory / MANIFEST
    entries = [e for e in manifest_entries(directory, spec) if split is None or e["split"] == split]
    shards = [_manifest_shard(directory, e, path, spec) for e in entries]
    missing = [s.url for s in shards if not Path(s.url).is_file()]
    if missing:
        raise FileNotFoundError(f"{spec}: missing shard {missing[0]} ({len(missing)} missing); rebuild or re-copy DIR")
    if check_counts:
        _check_counts(shards, {s.url: path for s in shards}, spec)
    return shards


# ---------------------------------------------------------------- img2dataset folders

def _successes(stats: Path, spec: str) -> int:
    try:
        count = json.loads(stats.read_text())["successes"]
    except (ValueError, KeyError, TypeError, OSError) as exn:
        raise ValueError(f"{spec}: unreadable {stats} ({exn!r}); re-run img2dataset for that shard or delete "
                         f"it and its .tar") from None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"{spec}: {stats} gives \"successes\" {count!r}, not a whole number >= 0; "
                         "re-run img2dataset for that shard")
    return count


def read_img2dataset(folder: Path, spec: str) -> list[Shard]:
    """Every finished shard of an img2dataset output folder, by name; counts from its _stats.json.

    img2dataset writes a shard's stats after its tar, so a tar without stats did not finish.
    """
    shards, claims = [], {}
    for tar in sorted(folder.glob("*.tar")):
        stats = tar.with_name(tar.stem + STATS_SUFFIX)
        if not stats.is_file():
            raise FileNotFoundError(f"{spec}: {tar.name} has no {stats.name} beside it (an img2dataset shard that did "
                                    f"not finish); re-run img2dataset into {folder} or delete {tar.name}")
        count = _successes(stats, spec)
        if count:  # a shard whose downloads all failed holds no sample
            shards.append(Shard(str(tar), count))
            claims[str(tar)] = stats
    if not shards:
        raise ValueError(f"{spec}: the img2dataset shards in {folder} hold no samples (every \"successes\" is 0); "
                         "check the download's _stats.json files")
    _check_counts(shards, claims, spec)
    return shards


def img2dataset_metadata(folder: Path) -> pa.Table:
    """Every row img2dataset wrote to the folder's ``NNNNN.parquet`` files (failed downloads too:
    url, caption, key, status, error_message, sizes, exif, sha256), one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # optional heavy import, only when the metadata is asked for

    tables = [pq.read_table(path) for path in sorted(folder.glob("*.parquet"))]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


# ---------------------------------------------------------------- any spec

def _resolve_folder(folder: Path, split: str | None, spec: str) -> Resolved:
    if (folder / MANIFEST).is_file():
        available = sorted({entry["split"] for entry in manifest_entries(folder, spec)})
        chosen, note = pick_split(available, split, spec)
        return Resolved(tuple(read_manifest(folder, chosen, spec)), folder, chosen, note)
    if is_img2dataset(folder):
        if split not in UNSPLIT_ACCEPTS:
            raise ValueError(f"{spec}: an img2dataset folder has no splits (split {split!r} asked for); drop "
                             "::SPLIT / --split, or split it with python -m clip_pretrain.data.build --val-fraction")
        return Resolved(tuple(read_img2dataset(folder, spec)), folder, None)
    raise FileNotFoundError(
        f"{spec}: no {MANIFEST} and no img2dataset shards (NNNNN.tar + NNNNN_stats.json) in directory {folder}; "
        f"build shards with `python -m clip_pretrain.data.build --input {folder} --output NEW_DIR` or pass a brace pattern / .tar path")


def resolve(spec: str, split: str | None = None) -> Resolved:
    """One spec string -> its shards, in a stable order. ``split``: the split to read from a folder
    with splits (``DIR::SPLIT`` wins); None reads the only one, else val, with a note."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{spec!r}: empty shard spec; pass a directory, brace pattern, .tar path or pipe: URL")
    base, named = split_suffix(spec)
    if not is_remote(base) and local_path(base).is_dir():
        return _resolve_folder(local_path(base), named or split, spec)
    urls = expand_pattern(spec)
    if is_remote(spec):
        return Resolved(tuple(Shard(url) for url in urls))
    missing = [url for url in urls if not local_path(url).is_file()]
    if len(missing) == len(urls):
        raise FileNotFoundError(
            f"{spec}: matches no shard files (empty brace pattern or missing directory); check the path")
    if missing:
        raise FileNotFoundError(f"{spec}: missing shard {missing[0]} ({len(missing)} of {len(urls)} missing)")
    return Resolved(tuple(Shard(url) for url in urls))


def resolve_spec(spec: str, split: str = "train") -> list[Shard]:
    """The shards of one spec (the training loader's view: ``split`` is ``data.split``)."""
    return list(resolve(spec, split).shards)


def resolve_sources(train: str | Sequence[str] | Sequence[dict], split: str = "train") -> list[Source]:
    """Sources from the ``DataConfig.train`` field.

    A string or a list of strings is one pooled source (shards concatenated); a list of
    ``{"spec", "weight"}`` dicts gives one weighted source per entry (mixing in resampled mode).
    """
    if isinstance(train, str):
        train = [train]
    if all(isinstance(entry, str) for entry in train):
        shards = [shard for spec in train for shard in resolve_spec(spec, split)]
        return [Source(" + ".join(train), tuple(shards))]
    return [Source(e["spec"], tuple(resolve_spec(e["spec"], split)), float(e.get("weight", 1.0))) for e in train]


def input_tars(path: str, where: str) -> list[str]:
    """The local tar files data.build reads from a shard input: a .tar, a brace pattern, a folder
    with manifest.json (every split) or any other folder of .tar files (img2dataset's, by name)."""
    folder = Path(path)
    if folder.is_dir():
        if (folder / MANIFEST).is_file():
            return [shard.url for shard in read_manifest(folder, None, where, check_counts=False)]
        return sorted(str(tar) for tar in folder.glob("*.tar"))
    return expand_pattern(path, where)
