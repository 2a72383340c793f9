"""Tar shards read sample by sample with byte offsets, so a stream can stop anywhere and restart there.

Every sample comes out tagged with ``__offset__`` (where the tar header of its first member starts)
and ``__end__`` (just past the data of its last member). Tar members are 512-byte aligned and a
member header holds everything needed to read it, so a reader opened at either offset continues
exactly where the first left off: a checkpoint can name a stream position, or a sample held in the
shuffle buffer, as (shard, offset) instead of re-reading the shard from its start.

webdataset's ``tar_file_iterator`` + ``group_by_keys`` do the same grouping but do not expose member
offsets, so this module walks the members with :mod:`tarfile` itself and keeps their rules: regular
files only, ``__*__`` metadata names skipped, the key/extension split of ``base_plus_ext``, lower-case
extensions, a repeated extension within a sample is an error, and a sample cut short by damage is
still handed out (with the members read before it) before the error is raised.
"""
from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from typing import IO, Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator default
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: offsets are not seekable


@dataclass
class ReadStats:
    """Tar bytes read (headers and member data, as the tar reader asked for them) and members opened."""

    bytes: int = 0
    members: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"bytes": self.bytes, "members": self.members}


class CountingReader:
    """A file object that adds the bytes read through it to ``stats`` (all tarfile needs: read/seek/tell)."""

    def __init__(self, raw: IO[bytes], stats: ReadStats) -> None:
        self.raw, self.stats = raw, stats

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.stats.bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def is_local(url: str) -> bool:
    return not url.startswith("pipe:") and ("://" not in url or url.startswith("file://"))


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def _member_end(info: tarfile.TarInfo) -> int:
    """Offset just past a member's data, padded to the 512-byte block where the next header starts."""
    return info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _open(url: str, start: int, stats: ReadStats) -> tuple[tarfile.TarFile, IO[bytes]]:
    """A tar reader positioned at or before byte ``start`` of ``url``, and the raw stream to close.

    An uncompressed local file is opened in tarfile's random-access mode after seeking to ``start``
    (its member offsets are then absolute and nothing before ``start`` is read); anything else
    (pipe:, URLs, compressed tars) is a forward-only stream read from its first byte.
    """
    raw = open(_local_path(url), "rb") if is_local(url) else gopen(url)  # noqa: SIM115 - closed by the caller
    try:
        if is_local(url):
            compressed = raw.read(6).startswith(COMPRESSED_MAGIC)
            raw.seek(0 if compressed else start)
            if not compressed:
                return tarfile.TarFile(fileobj=CountingReader(raw, stats)), raw  # type: ignore[arg-type]
        return tarfile.open(fileobj=CountingReader(raw, stats), mode="r|*"), raw  # type: ignore[call-overload]
    except BaseException:
        _close_quietly(raw)
        raise


def _members(tar: tarfile.TarFile, start: int) -> Iterator[tarfile.TarInfo]:
    """Headers of the regular, non-metadata members from ``start`` on (their data is not read yet)."""
    while (info := tar.next()) is not None:
        tar.members.clear()  # tarfile remembers every member it read: keep memory flat over big shards
        if info.offset >= start and info.isreg() and not SKIP_META.match(info.name):
            yield info  # in stream mode tarfile reads past the data of members skipped here


def _group(tar: tarfile.TarFile, url: str, start: int, stats: ReadStats) -> Iterator[dict]:
    """Consecutive members sharing a key -> one sample dict (webdataset's group_by_keys, plus offsets).

    A sample is handed out as soon as the next member's header shows another key, before that
    member's data is read: a reader that stops after one sample reads one header more, not a member.
    """
    sample: dict | None = None
    try:
        for info in _members(tar, start):
            prefix, suffix = base_plus_ext(info.name)
            if prefix is None:
                continue
            suffix = suffix.lower()
            if sample is None or prefix != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": prefix, "__url__": url, "__offset__": info.offset}
            if suffix in sample:
                raise ValueError(f"{info.name}: duplicate file name in tar file")
            stats.members += 1
            sample[suffix] = tar.extractfile(info).read()  # type: ignore[union-attr]  # regular: has data
            sample["__end__"] = _member_end(info)
    except Exception:
        if sample is not None and "__end__" in sample:  # members read before the damage: the decoder judges them
            yield sample
        raise
    if sample is not None:
        yield sample


def iter_samples(url: str, start: int, stats: ReadStats) -> Iterator[dict]:
    """Samples of the tar ``url`` from byte ``start`` (0 or a sample's ``__offset__`` / ``__end__``).

    Each is a dict: __key__, __url__, __offset__, __end__ and one bytes value per extension. Damage
    ends the iteration with the tar or I/O error (after the part of a sample read before it); a
    ``pipe:`` command that exits with an error status raises when the stream is closed at the end.
    """
    tar, raw = _open(url, start, stats)
    finished = False
    try:
        yield from _group(tar, url, start, stats)
        finished = True
    finally:
        if finished:
            raw.close()  # webdataset's pipe object raises here when the command failed
        else:
            _close_quietly(raw)  # stopped early or failing already: a pipe's exit status is noise now


def _close_quietly(raw: IO[bytes]) -> None:
    try:
        raw.close()
    except Exception:  # noqa: BLE001 - e.g. a pipe: command killed by SIGPIPE because we stopped reading
        pass


def read_samples_at(url: str, offsets: list[int], stats: ReadStats) -> dict[int, dict]:
    """The samples that start at ``offsets`` in ``url``, by offset: each seeked to in a local tar,
    one forward pass from the first wanted offset otherwise. Raises ValueError naming the first
    offset where no sample starts (the shard changed since the offsets were taken)."""
    wanted = sorted(set(offsets))
    wanted_set = set(wanted)
    found: dict[int, dict] = {}
    if wanted and is_local(url):
        for offset in wanted:
            samples = iter_samples(url, offset, stats)
            try:
                found[offset] = next(samples)
            except (StopIteration, Exception):  # noqa: BLE001 - reported below as a missing sample
                pass
            finally:
                samples.close()
    elif wanted:
        samples = iter_samples(url, wanted[0], stats)
        try:
            for sample in samples:
                if sample["__offset__"] in wanted_set:
                    found[sample["__offset__"]] = sample
                if sample["__offset__"] >= wanted[-1]:
                    break
        except Exception:  # noqa: BLE001 - damage after the wanted samples is not this reader's business
            pass
        finally:
            samples.close()
    missing = [offset for offset in wanted if found.get(offset, {}).get("__offset__") != offset]
    if missing:
        raise ValueError(f"no tar sample starts at byte {missing[0]} of {url} ({len(missing)} of {len(wanted)} "
                         "missing): the shard changed since the checkpoint; resume with the shards it was written with")
    return found
