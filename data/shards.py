"""Shard specs -> shard lists, and the deterministic shard plans of the streaming loader.

A *spec* (see notes/CONTRACT.md) is one of:
  - a directory holding manifest.json: ``DIR`` (the configured split) or ``DIR::val``;
  - a brace pattern ``dir/x-{000000..000009}.tar`` or a single ``.tar`` path;
  - a ``pipe:CMD`` (or other webdataset ``gopen``) URL, itself brace-expanded.
Local files are checked up front so that a typo fails at start-up with a one-line error, not
inside a DataLoader worker an hour later.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import braceexpand

MANIFEST = "manifest.json"
MAX_EXPANSION = 1_000_000  # shards one brace pattern may name (a typo like {0..999999999} would exhaust memory)
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Shard:
    """One tar shard: a local path or a gopen URL; ``count`` = samples per the manifest, if known."""

    url: str
    count: int | None = None


@dataclass(frozen=True)
class Source:
    """A group of shards drawn from with probability proportional to ``weight`` (resampled mode)."""

    spec: str
    shards: tuple[Shard, ...]
    weight: float = 1.0


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any reprs (unlike ``hash()``, equal across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def _local_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


VERIFY_SHARDS = 256  # manifests this long are checked shard by shard; longer ones at evenly spread shards


def count_samples(path: Path) -> int:
    """Samples (distinct keys) in a tar, from its headers only (member data is skipped, not read)."""
    keys = set()
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if member.isfile():
                directory, base = os.path.split(member.name)
                keys.add(os.path.join(directory, base.split(".", 1)[0]))
    return len(keys)


def _check_counts(shards: list[Shard], manifest: Path, spec: str) -> None:
    """The counts a manifest claims must be what the tars hold: epoch sizes and the batch-size check
    are computed from them. Every shard is checked up to VERIFY_SHARDS, a spread of them beyond."""
    step = max(1, len(shards) // VERIFY_SHARDS)
    for shard in shards[::step]:
        if shard.count is None:
            continue
        try:
            actual = count_samples(Path(shard.url))
        except (tarfile.TarError, OSError) as exn:
            raise ValueError(f"{spec}: shard {shard.url} is not a readable tar ({exn}); rebuild it with data.build") from None
        if actual != shard.count:
            raise ValueError(f"{spec}: {manifest} says {Path(shard.url).name} holds {shard.count} samples, the tar holds "
                             f"{actual}; rebuild the shards with data.build or correct the manifest")


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


def read_manifest(directory: Path, split: str, spec: str) -> list[Shard]:
    """Shards of ``split`` listed in ``directory/manifest.json``, in manifest order."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec}: no {MANIFEST} in directory {directory}; build shards with `python -m data.build` "
            "or pass a brace pattern / .tar path")
    try:
        manifest = json.loads(path.read_text())
        entries = [e for e in manifest["shards"] if e["split"] == split]
    except (ValueError, KeyError, TypeError) as exn:
        raise ValueError(f"{spec}: unreadable {path} ({exn!r}); rebuild the shards with data.build") from None
    if not entries:
        raise ValueError(f"{spec}: manifest {path} lists no '{split}' shards; pick another split with DIR::SPLIT")
    shards = [_manifest_shard(directory, e, path, spec) for e in entries]
    missing = [s.url for s in shards if not Path(s.url).is_file()]
    if missing:
        raise FileNotFoundError(f"{spec}: missing shard {missing[0]} ({len(missing)} missing); rebuild or re-copy DIR")
    _check_counts(shards, path, spec)
    return shards


def brace_size_bound(pattern: str) -> int:
    """An upper bound on the names a brace pattern expands to (the product of its numeric ranges),
    computed without expanding it."""
    bound = 1
    for start, stop, step in _RANGE.findall(pattern):
        bound *= abs(int(stop) - int(start)) // max(abs(int(step or 1)), 1) + 1
    return bound


def resolve_spec(spec: str, split: str = "train") -> list[Shard]:
    """Expand one spec string into its shards (in a stable order)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{spec!r}: empty shard spec; pass a directory, brace pattern, .tar path or pipe: URL")
    base, sep, suffix = spec.rpartition("::")
    if sep and not _is_remote(base) and Path(base).is_dir():
        if suffix not in SPLITS:
            raise ValueError(f"{spec}: unknown split '{suffix}'; use DIR::train or DIR::val")
        return read_manifest(Path(base), suffix, spec)
    if not _is_remote(spec) and Path(spec).is_dir():
        return read_manifest(Path(spec), split, spec)
    if brace_size_bound(spec) > MAX_EXPANSION:  # braceexpand builds a whole range before yielding any name
        raise ValueError(f"{spec}: the brace pattern names more than {MAX_EXPANSION} shards; check its ranges")
    try:
        urls = list(braceexpand.braceexpand(spec))
    except Exception as exn:  # braceexpand raises its own UnbalancedBracesError
        raise ValueError(f"{spec}: bad brace pattern ({exn}); use e.g. dir/x-{{000000..000009}}.tar") from None
    if _is_remote(spec):
        return [Shard(url) for url in urls]
    missing = [url for url in urls if not _local_path(url).is_file()]
    if len(missing) == len(urls):
        raise FileNotFoundError(
            f"{spec}: matches no shard files (empty brace pattern or missing directory); check the path")
    if missing:
        raise FileNotFoundError(f"{spec}: missing shard {missing[0]} ({len(missing)} of {len(urls)} missing)")
    return [Shard(url) for url in urls]


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


def epoch_order(shards: Sequence[Shard], seed: int, epoch: int) -> list[Shard]:
    """All shards in the order of ``epoch``: a permutation seeded by (seed, epoch), equal on every rank."""
    order = list(shards)
    random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


def rank_shard_count(num_shards: int, rank: int, world_size: int) -> int:
    """Shards that ``rank`` reads per epoch (the same number every epoch)."""
    return len(range(rank, num_shards, world_size))


def slot_shards(ordered: Sequence[Shard], rank: int, world_size: int, worker: int, num_workers: int) -> list[Shard]:
    """The part of one epoch's shard order read by (rank, worker): strided so slots partition it."""
    return list(ordered[rank::world_size][worker::num_workers])
