"""Shard builder: captioned images -> webdataset tar shards + manifest.json + stats.json.

    python -m clip_pretrain.data.build --input captions.jsonl --output shards/ --val-fraction 0.05

The sample -> shard assignment is a pure function of the inputs and options (samples sorted by
key, split by a hash of the key, then filled in order), so re-running an interrupted build reuses
every finished shard and writes only the missing ones. Each shard is written as ``.tmp`` and
renamed when complete; a sidecar in ``DIR/.build/`` records the candidate range it consumed, its
skip counts and (for --dedup) the content hashes it kept, so a reused shard needs no re-decoding.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tqdm import tqdm
from webdataset import TarWriter

from clip_pretrain.common.cli import prog_name
from clip_pretrain.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageOptions, ProcessedImage, SkipImage, content_digest, process_image
from clip_pretrain.data.sources import KINDS, CollectResult, Columns, ImageRef, Sample, collect_samples
from clip_pretrain.data.specs import expand_pattern, has_range

SPLITS = ("train", "val")
SKIP_REASONS = ("corrupt_image", "too_small", "too_large", "empty_caption", "duplicate",
                "missing_file", "missing_label", "unknown_label", "bad_row", "corrupt_shard",
                "bad_encoding", "outside_root", "key_conflict")
SIDECAR_DIR = ".build"
LOCK_FILE = "lock"
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
# Files a build writes at the top of its output (and their .tmp while being written).
_OWN_FILE = re.compile(r"^(manifest\.json|stats\.json|classnames\.json|[A-Za-z0-9_]+-(train|val)-\d{6}\.tar)(\.tmp)?$")


@dataclass(frozen=True)
class BuildOptions:
    """Options of ``build_shards`` (the CLI flags with dashes turned into underscores)."""

    shard_size: int = 1000
    max_side: int = 512
    min_side: int = 16
    jpeg_quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    workers: int = min(8, os.cpu_count() or 1)
    val_fraction: float = 0.0
    prefix: str = "shard"
    dedup: bool = False
    input_kind: str | None = None
    image_column: str = "image"
    caption_column: str | None = None
    label_column: str | None = None
    key_column: str | None = None
    image_root: str | None = None  # images must lie here (default: the table's folder / the image folder)
    classnames: tuple[str, ...] | None = None  # fixed class order; default: sorted labels seen
    max_caption_chars: int = 1000
    reencode: bool = False  # False: JPEGs that already fit max_side (RGB, no EXIF) are kept byte for byte
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size: must be >= 1, got {self.shard_size}; pass e.g. 1000")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}; pass e.g. 0.05")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0, got {self.workers}; 0 or 1 runs in-process")
        if not _PREFIX_PATTERN.match(self.prefix):
            raise ValueError(f"prefix: '{self.prefix}' must be letters, digits or '_'; pick e.g. 'shard'")
        if self.input_kind is not None and self.input_kind not in KINDS:
            raise ValueError(f"input_kind: unknown kind '{self.input_kind}'; use one of {', '.join(KINDS)}")
        if self.max_caption_chars < 1:
            raise ValueError(f"max_caption_chars: must be >= 1, got {self.max_caption_chars}; pass e.g. 1000")
        if self.classnames is not None:
            if self.label_column is None or len(set(self.classnames)) != len(self.classnames):
                raise ValueError("classnames: needs label_column and unique names; pass --label-column or drop it")
        self.image_options()  # validates the image fields

    def image_options(self) -> ImageOptions:
        return ImageOptions(self.max_side, self.min_side, self.jpeg_quality, self.max_pixels, self.max_bytes,
                            self.reencode)

    def columns(self) -> Columns:
        return Columns(self.image_column, self.caption_column, self.label_column, self.key_column, self.image_root)


@dataclass(frozen=True)
class ImageResult:
    """What a worker returns for one image: the re-encoded image or the reason it was skipped."""

    image: ProcessedImage | None = None
    reason: str | None = None
    digest: str | None = None


def split_of(key: str, val_fraction: float) -> str:
    """'val' for a stable ``val_fraction`` share of keys (hash of the key), else 'train'."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
    return "val" if bucket < val_fraction else "train"


def shard_name(prefix: str, split: str, index: int) -> str:
    return f"{prefix}-{split}-{index:06d}.tar"


# ---- worker side -------------------------------------------------------------------------------

_WORKER_OPTIONS: ImageOptions | None = None


def _init_worker(options: ImageOptions) -> None:
    global _WORKER_OPTIONS
    _WORKER_OPTIONS = options


def _process_ref(ref: ImageRef) -> ImageResult:
    """Read, validate and re-encode one image (runs in a pool worker)."""
    assert _WORKER_OPTIONS is not None, "_init_worker must run first"
    try:
        if ref.byte_size() > _WORKER_OPTIONS.max_bytes:
            return ImageResult(reason="too_large")  # never read into memory
        data = ref.read()
    except OSError:  # gone, a directory, or unreadable: all mean the file is not usable
        return ImageResult(reason="missing_file")
    digest = content_digest(data)
    try:
        return ImageResult(image=process_image(data, _WORKER_OPTIONS), digest=digest)
    except SkipImage as skip:
        return ImageResult(reason=skip.reason, digest=digest)


class _ResultStream:
    """Ordered image results for candidates from ``start`` on, computed a window at a time.

    Windows bound memory (Pool.imap would otherwise queue the whole dataset) and let the
    builder jump over ranges covered by reused shards.
    """

    def __init__(self, candidates: Sequence[Sample], start: int, pool: Any, window: int) -> None:
        self.candidates, self.position, self.pool, self.window = candidates, start, pool, window
        self._results: Iterator[ImageResult] = iter(())
        self._window_end = start

    def __iter__(self) -> _ResultStream:
        return self

    def __next__(self) -> tuple[Sample, ImageResult]:
        if self.position >= len(self.candidates):
            raise StopIteration
        if self.position >= self._window_end:
            self._window_end = min(len(self.candidates), self.position + self.window)
            refs = [sample.image for sample in self.candidates[self.position:self._window_end]]
            self._results = self.pool.imap(_process_ref, refs, chunksize=8) if self.pool else map(_process_ref, refs)
        sample = self.candidates[self.position]
        self.position += 1
        return sample, next(self._results)


# ---- writing -----------------------------------------------------------------------------------

def _atomic_write_bytes(path: str, payload: bytes) -> None:
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # readers see the old file or the new one, never half of it


def write_json_atomic(path: str, value: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _sample_record(sample: Sample, image: ProcessedImage, cls: int | None) -> dict[str, Any]:
    """One webdataset sample. Its json keeps the input's own per-sample fields (img2dataset's url,
    sha256, exif, status...); the builder's fields, which describe the stored image, win."""
    meta: dict[str, Any] = dict(sample.meta or {})
    meta.update({"key": sample.key, "captions": sample.captions, "width": image.width,
                 "height": image.height, "original_width": image.original_width,
                 "original_height": image.original_height})
    if sample.label is not None:
        meta["label"] = sample.label
    record = {"__key__": sample.key, "jpg": image.jpeg, "txt": sample.captions[0].encode("utf-8"),
              "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    if cls is not None:
        record["cls"] = str(cls).encode("ascii")
    return record


def write_shard(path: str, samples: list[tuple[Sample, ProcessedImage]], classnames: list[str] | None) -> None:
    """Write a tar shard under ``path.tmp`` and rename it into place once complete.

    webdataset's TarWriter writes into memory (fixed mtime/owner/mode: the same samples always give
    byte-identical shards, which resumed builds compare); the atomic fsync'd rename is ours.
    PAX headers: keys longer than ustar's 100 characters stay whole.
    """
    class_index = {name: index for index, name in enumerate(classnames or [])}
    buffer = io.BytesIO()
    with TarWriter(buffer, user="", group="", mode=0o644, encoder=False, mtime=0, format="PAX_FORMAT") as writer:
        for sample, image in samples:
            writer.write(_sample_record(sample, image, class_index[sample.label] if classnames is not None else None))
    _atomic_write_bytes(path, buffer.getvalue())


def count_tar_samples(path: str) -> int:
    """Number of samples (distinct keys with a jpg) in a tar; -1 when it is unreadable."""
    try:
        with tarfile.open(path, "r") as archive:
            return sum(1 for member in archive if member.isfile() and member.name.endswith(".jpg"))
    except (tarfile.TarError, OSError):
        return -1


# ---- planning and resuming ---------------------------------------------------------------------

def _fingerprint(options: BuildOptions, samples: list[Sample], classnames: list[str] | None) -> str:
    """Hash of everything that decides shard contents; a reused shard must match it."""
    content_fields = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("workers", "progress")}
    digest = hashlib.blake2b(json.dumps([content_fields, classnames]).encode(), digest_size=16)
    for sample in samples:
        ref = sample.image
        digest.update(json.dumps([sample.key, sample.captions, sample.label, ref.path, ref.offset, ref.size,
                                  sample.meta], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _sidecar_path(output: str, name: str) -> str:
    return os.path.join(output, SIDECAR_DIR, name + ".json")


def _reusable_shard(output: str, name: str, fingerprint: str, start: int) -> dict | None:
    """The sidecar of a finished shard that this build would write identically, else None."""
    try:
        with open(_sidecar_path(output, name), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != fingerprint or record.get("start") != start:
        return None
    if count_tar_samples(os.path.join(output, name)) != record.get("count"):
        return None  # missing, truncated or replaced: rewrite it
    return record


def _remove_tmp_files(output: str) -> None:
    """Delete .tmp leftovers of an interrupted build (shards, sidecars, manifest, stats); never
    a .tmp file of another name."""
    for entry in os.listdir(output):
        if entry.endswith(".tmp") and _OWN_FILE.match(entry):
            os.remove(os.path.join(output, entry))
    sidecars = os.path.join(output, SIDECAR_DIR)
    for entry in os.listdir(sidecars):
        if entry.endswith(".json.tmp"):
            os.remove(os.path.join(sidecars, entry))


def _input_files(path: str) -> list[str]:
    return expand_pattern(path, f"--input {path}") if has_range(path) else [path]


def check_output(output: str, inputs: Sequence[str]) -> None:
    """Refuses an output folder the build could damage: one that holds (or is) one of its inputs
    (re-sharding in place would overwrite or delete them), or that already holds files this
    builder did not write (its clean-up would treat them as its own)."""
    out = Path(output).resolve()
    for path in inputs:
        for candidate in _input_files(path):
            resolved = Path(candidate).resolve()
            if resolved == out or out in resolved.parents:
                raise ValueError(f"--output {output}: holds the build's own input {candidate}, which re-sharding in "
                                 "place would overwrite or delete; write to a new folder and swap it in afterwards")
    if out.is_file():
        raise ValueError(f"--output {output}: is a file; pass a folder")
    if out.is_dir() and not (out / SIDECAR_DIR).is_dir():  # .build/: a folder this builder wrote before
        entries = sorted(os.listdir(out))
        if entries:
            raise ValueError(f"--output {output}: already holds files this builder did not write (e.g. {entries[0]!r}); "
                             "pass an empty or new folder")


@contextlib.contextmanager
def output_lock(output: str) -> Iterator[None]:
    """One build per output folder at a time (an flock: the OS drops it if the build dies)."""
    path = os.path.join(output, SIDECAR_DIR, LOCK_FILE)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = f"pid {int(Path(path).read_text())}"
        except (OSError, ValueError):
            holder = "another process"
        raise ValueError(f"--output {output}: another build ({holder}) is writing it; wait for it to finish "
                         "or pick another folder") from None
    try:
        Path(path).write_text(str(os.getpid()))
        yield
    finally:
        lock.release()


def _remove_stale_shards(output: str, prefix: str, keep: set[str]) -> None:
    """Delete shards of this prefix (and their sidecars) that this build did not produce."""
    pattern = re.compile(rf"^{re.escape(prefix)}-({'|'.join(SPLITS)})-\d{{6}}\.tar$")
    for entry in os.listdir(output):
        if pattern.match(entry) and entry not in keep:
            os.remove(os.path.join(output, entry))
            if os.path.exists(_sidecar_path(output, entry)):
                os.remove(_sidecar_path(output, entry))


@dataclass
class _SplitContext:
    output: str
    options: BuildOptions
    fingerprint: str
    classnames: list[str] | None
    pool: Any
    seen: set[str]
    skipped: Counter
    bar: tqdm
    reused: int = 0


KeptSamples = list[tuple[Sample, ProcessedImage]]


def _fill_shard(stream: _ResultStream, context: _SplitContext) -> tuple[KeptSamples, Counter, list[str]]:
    """Pull results until the shard holds ``shard_size`` images or the split ends."""
    kept: KeptSamples = []
    skipped: Counter = Counter()
    digests: list[str] = []
    while len(kept) < context.options.shard_size:
        try:
            sample, result = next(stream)
        except StopIteration:
            break
        context.bar.update(1)
        if result.image is None:
            skipped[result.reason or "corrupt_image"] += 1
        elif context.options.dedup and result.digest in context.seen:
            skipped["duplicate"] += 1
        else:
            kept.append((sample, result.image))
            if context.options.dedup:
                context.seen.add(result.digest)
                digests.append(result.digest)
    return kept, skipped, digests


def _build_split(split: str, candidates: list[Sample], context: _SplitContext) -> list[dict]:
    """Write (or reuse) every shard of one split; returns manifest entries."""
    entries: list[dict] = []
    position, index, stream = 0, 0, None
    window = max(context.options.shard_size, 64)
    while position < len(candidates):
        name = shard_name(context.options.prefix, split, index)
        record = _reusable_shard(context.output, name, context.fingerprint, position)
        if record is not None:
            context.seen.update(record["digests"])
            context.skipped.update(record["skipped"])
            context.bar.update(record["end"] - position)
            context.reused += 1
            position = record["end"]
        else:
            if stream is None or stream.position != position:
                stream = _ResultStream(candidates, position, context.pool, window)
            kept, skipped, digests = _fill_shard(stream, context)
            context.skipped.update(skipped)
            if not kept:
                break  # only skipped candidates were left: no empty shard
            write_shard(os.path.join(context.output, name), kept, context.classnames)
            record = {"fingerprint": context.fingerprint, "start": position, "end": stream.position,
                      "count": len(kept), "skipped": dict(skipped), "digests": digests}
            write_json_atomic(_sidecar_path(context.output, name), record)
            position = stream.position
        entries.append({"file": name, "split": split, "count": record["count"]})
        index += 1
    return entries


def _classnames(opts: BuildOptions, collected: CollectResult) -> list[str] | None:
    """The class list (index = cls); samples whose label is not in a fixed list are skipped."""
    if opts.label_column is None:
        return None
    if opts.classnames is None:
        return sorted({sample.label for sample in collected.samples})
    allowed = set(opts.classnames)
    kept = [sample for sample in collected.samples if sample.label in allowed]
    collected.skipped["unknown_label"] += len(collected.samples) - len(kept)
    collected.samples = kept
    return list(opts.classnames)


def _open_pool(workers: int, image_options: ImageOptions) -> Any:
    if workers <= 1:
        _init_worker(image_options)  # in-process: the same code path without pickling
        return None
    return multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(image_options,))


def build_shards(inputs: list[str], output: str, **options: Any) -> dict:
    """Build webdataset shards from ``inputs`` into ``output``; returns the stats dict.

    ``options`` are the fields of BuildOptions. Raises FileNotFoundError / ValueError with a
    one-line message for a missing input, unknown option or unknown column.
    """
    known = {f.name for f in dataclasses.fields(BuildOptions)}
    for name in options:
        if name not in known:
            raise ValueError(f"{name}: unknown build option; use one of {', '.join(sorted(known))}")
    if options.get("classnames") is not None:
        options["classnames"] = tuple(options["classnames"])
    opts = BuildOptions(**options)
    if not inputs:
        raise ValueError("inputs: no input given; pass at least one --input")
    check_output(output, inputs)
    os.makedirs(os.path.join(output, SIDECAR_DIR), exist_ok=True)
    with output_lock(output):
        return _build_locked(list(inputs), output, opts)


def _build_locked(inputs: list[str], output: str, opts: BuildOptions) -> dict:
    collected = collect_samples(inputs, opts.input_kind, opts.columns(), opts.max_caption_chars)
    classnames = _classnames(opts, collected)
    by_split: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for sample in collected.samples:
        by_split[split_of(sample.key, opts.val_fraction)].append(sample)

    _remove_tmp_files(output)
    fingerprint = _fingerprint(opts, collected.samples, classnames)
    skipped: Counter = Counter({reason: 0 for reason in SKIP_REASONS})
    skipped.update(collected.skipped)
    pool = _open_pool(opts.workers, opts.image_options())
    bar = tqdm(total=len(collected.samples), unit="img", desc="build shards", disable=not opts.progress, smoothing=0.1)
    context = _SplitContext(output, opts, fingerprint, classnames, pool, set(), skipped, bar)
    try:
        entries = [entry for split in SPLITS for entry in _build_split(split, by_split[split], context)]
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    _remove_stale_shards(output, opts.prefix, keep={entry["file"] for entry in entries})
    return _write_outputs(output, opts, entries, classnames, collected.counters, context)


def _write_outputs(output: str, opts: BuildOptions, entries: list[dict], classnames: list[str] | None,
                   counters: Counter, context: _SplitContext) -> dict:
    totals = {split: sum(e["count"] for e in entries if e["split"] == split) for split in SPLITS}
    if classnames is not None:
        write_json_atomic(os.path.join(output, "classnames.json"), classnames)
    write_json_atomic(os.path.join(output, "manifest.json"),
                      {"format": 1, "prefix": opts.prefix, "shards": entries, "totals": totals})
    stats = {
        "kept": sum(totals.values()),
        "skipped": dict(context.skipped),
        "truncated_caption": counters["truncated_caption"],
        "empty_caption_dropped": counters["empty_caption_dropped"],
        "merged_rows": counters["merged_rows"],
        "totals": totals,
        "shards": len(entries),
        "reused_shards": context.reused,
        "options": {k: v for k, v in dataclasses.asdict(opts).items() if k != "progress"},
    }
    write_json_atomic(os.path.join(output, "stats.json"), stats)
    return stats


# ---- CLI ---------------------------------------------------------------------------------------

def _read_classnames(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            names = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise argparse.ArgumentTypeError(f"cannot read a JSON list of class names from {path}: {err}") from err
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise argparse.ArgumentTypeError(f"{path} must hold a JSON list of strings")
    return names


def _parser() -> argparse.ArgumentParser:
    defaults = BuildOptions()
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.data.build"), description=__doc__.splitlines()[0])
    parser.add_argument("--input", action="append", required=True,
                        help="JSONL/CSV/Parquet table, image folder, .tar, brace pattern or shard dir (repeatable)")
    parser.add_argument("--output", required=True, help="output directory for shards, manifest.json, stats.json")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="samples per shard")
    parser.add_argument("--max-side", type=int, default=defaults.max_side, help="longest image side after resize")
    parser.add_argument("--min-side", type=int, default=defaults.min_side, help="skip images with a smaller side")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="decompression-bomb pixel limit")
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes, help="skip larger image files unread")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="image processes (0/1: in-process)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="share of keys for val")
    parser.add_argument("--prefix", default=defaults.prefix, help="shard file prefix")
    parser.add_argument("--dedup", action="store_true", help="skip exact-duplicate images (content hash)")
    parser.add_argument("--input-kind", choices=KINDS, default=None, help="override auto-detection")
    parser.add_argument("--image-column", default=defaults.image_column)
    parser.add_argument("--caption-column", default=None, help="default: captions, caption, text or txt")
    parser.add_argument("--label-column", default=None, help="class label column (writes cls + classnames.json)")
    parser.add_argument("--key-column", default=None, help="sample key column (default: image path)")
    parser.add_argument("--image-root", default=None,
                        help="folder every image must lie in (default: the table's folder, or the image folder)")
    parser.add_argument("--classnames", type=_read_classnames, default=None,
                        help="JSON list of class names fixing the cls order (default: sorted labels)")
    parser.add_argument("--max-caption-chars", type=int, default=defaults.max_caption_chars)
    parser.add_argument("--reencode", action="store_true",
                        help="re-encode every image (default: RGB JPEGs within --max-side and without EXIF keep their bytes)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    inputs, output = args.pop("input"), args.pop("output")
    args["progress"] = not args.pop("no_progress")
    try:
        stats = build_shards(inputs, output, **args)
    except (ValueError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{reason}={count}" for reason, count in stats["skipped"].items() if count)
    print(f"kept {stats['kept']} samples in {stats['shards']} shards "
          f"(train {stats['totals']['train']}, val {stats['totals']['val']}); skipped: {skipped or 'none'}")
    if stats["skipped"].get("outside_root"):
        print(f"note: {stats['skipped']['outside_root']} images resolve outside the image root and were not read; "
              "pass --image-root DIR if they belong to the data set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
