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

Remote shards: ``http(s)://`` is read with urllib (a ``Range`` request starts it at an offset; a
connection closed before Content-Length is an error, not a quiet end), ``s3://`` with fsspec when
s3fs is installed (seekable) and else through ``aws s3 cp URL -``, ``pipe:`` commands through
:class:`TimedPipe`, other schemes through webdataset's gopen (read from the start, skipping to the
offset). Every remote read waits at most ``READ_TIMEOUT_S`` for bytes: a command or server that
goes silent fails like a cut connection instead of hanging the worker for good. Only uncompressed
``.tar`` names are started at an offset. A remote read that fails (I/O or tar error, timeout, a
failed command, HTTP 5xx/408/429) is reopened at the sample it was reading, after a doubling
back-off, up to ``RETRIES`` times in a row without a new sample; then it ends as damage. Local
files are never retried: their damage is permanent.

A member larger than ``MAX_MEMBER_BYTES`` is never read into memory (a "caption" or "image" of
gigabytes would exhaust the worker): its sample comes out with ``__oversized__`` naming it, for the
decoder to count as a skip.
"""
from __future__ import annotations

import http.client
import logging
import random
import re
import os
import select
import shlex
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)

SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator default
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: offsets are not seekable
RETRIES = 5  # failed attempts in a row (no new sample in between) before a remote shard counts as damaged
BACKOFF_S = 0.5  # first retry delay; doubles per failed attempt, up to BACKOFF_MAX_S
BACKOFF_MAX_S = 16.0
READ_TIMEOUT_S = 60.0  # a connection or pipe: command silent this long fails (and is retried) instead of hanging
MAX_MEMBER_BYTES = 256 * 2**20  # larger tar members are skipped unread (the builder's image limit, data.images)
TRANSIENT_HTTP = {408, 429}  # besides 5xx: worth asking again; other 4xx are permanent


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


def _open(url: str, start: int, stats: ReadStats) -> tuple[tarfile.TarFile, IO[bytes], int]:
    """A tar reader positioned at or before byte ``start`` of ``url``, the raw stream to close, and
    the shard offset of the stream's first byte (tarfile counts member offsets from there).

    An uncompressed local file is opened in tarfile's random-access mode after seeking to ``start``
    (nothing before it is read); anything else is a forward-only stream, started at ``start`` where
    the source can seek or serve a range, else at the shard's first byte.
    """
    raw, base = _open_raw(url, start)
    try:
        if is_local(url):
            compressed = raw.read(6).startswith(COMPRESSED_MAGIC)
            raw.seek(0 if compressed else start)
            if not compressed:
                return tarfile.TarFile(fileobj=CountingReader(raw, stats)), raw, 0  # type: ignore[arg-type]
        return tarfile.open(fileobj=CountingReader(raw, stats), mode="r|*"), raw, base  # type: ignore[call-overload]
    except BaseException:
        _close_quietly(raw)
        raise


def _open_raw(url: str, start: int) -> tuple[IO[bytes], int]:
    """The bytes of ``url`` from ``start`` where the source allows it, else from 0; and that start."""
    start = start if _plain_tar_name(url) else 0  # a compressed stream cannot be entered in the middle
    scheme = urllib.parse.urlparse(url).scheme if not url.startswith("pipe:") else "pipe"
    if is_local(url):
        return open(_local_path(url), "rb"), 0  # noqa: SIM115 - closed by the caller; _open seeks it
    if scheme in ("http", "https"):
        return _open_http(url, start)
    if scheme == "s3":
        return _open_s3(url, start)
    if scheme == "pipe":
        return TimedPipe(url[len("pipe:"):]), 0
    return gopen(url), 0  # gs://, hf://, ...: webdataset's openers, forward only


def _plain_tar_name(url: str) -> bool:
    path = urllib.parse.urlparse(url).path if not url.startswith("pipe:") else ""
    return is_local(url) or path.endswith(".tar")


def _open_http(url: str, start: int) -> tuple[IO[bytes], int]:
    headers = {"Range": f"bytes={start}-"} if start else {}
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=READ_TIMEOUT_S)
    base = start if response.status == 206 else 0  # a server that ignores Range sends it all: skip ahead
    length = response.headers.get("Content-Length")
    return LengthChecked(response, int(length) if length is not None else None), base


def _open_s3(url: str, start: int) -> tuple[IO[bytes], int]:
    try:
        import fsspec  # noqa: PLC0415 - optional: only s3:// shards need it (with s3fs)

        filesystem = fsspec.filesystem("s3")
    except ImportError:  # no fsspec or no s3fs: the aws CLI, forward only
        return TimedPipe(f"aws s3 cp {shlex.quote(url)} -"), 0
    handle = filesystem.open(url, "rb")
    handle.seek(start)
    return handle, start


class TimedPipe:
    """A shell command's stdout whose every read waits at most READ_TIMEOUT_S for bytes.

    webdataset's gopen pipe blocks forever on a command that hangs without output (a stalled
    ``curl``, a credential prompt); this one kills the command's process group and raises
    TimeoutError, which the caller retries like a cut connection. ``close`` raises OSError for a
    command that failed, as gopen's pipe does (``_close_quietly`` ignores it after an early stop).
    """

    def __init__(self, command: str) -> None:
        self.command = command
        # Its own session: killing the group ends `curl ... | tar ...` pipelines, not just the shell.
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, start_new_session=True)
        self.fd = self.proc.stdout.fileno()  # type: ignore[union-attr]

    def read(self, size: int = -1) -> bytes:
        chunks, remaining = [], size if size >= 0 else float("inf")
        while remaining > 0:
            ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT_S)
            if not ready:
                self._kill()
                raise TimeoutError(f"pipe:{self.command[:80]} sent nothing for {READ_TIMEOUT_S:g} s")
            data = os.read(self.fd, int(min(remaining, 2**20)))
            if not data:
                # At the end of the output, not at close: a failed command's last sample must fail
                # inside the tar reader, not come out complete-looking (as gopen's pipe does too).
                self._check_exit()
                break
            chunks.append(data)
            remaining -= len(data)
        return b"".join(chunks)

    def close(self) -> None:
        self.proc.stdout.close()  # type: ignore[union-attr]
        self._check_exit()

    def _check_exit(self) -> None:
        try:
            status = self.proc.wait(timeout=READ_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            raise TimeoutError(f"pipe:{self.command[:80]} did not exit {READ_TIMEOUT_S:g} s after its output ended") from None
        if status != 0:
            raise OSError(f"pipe:{self.command[:80]} exited with status {status}")

    def abort(self) -> None:
        """Stop the command now (the reader stopped early or failed): no wait for it to finish."""
        self._kill()
        self.proc.stdout.close()  # type: ignore[union-attr]

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class LengthChecked:
    """An HTTP response whose early end is an error: http.client returns b"" when the peer closes
    before Content-Length, which tarfile would take for the end of the archive at a member boundary."""

    def __init__(self, response: http.client.HTTPResponse, length: int | None) -> None:
        self.response, self.remaining = response, length

    def read(self, size: int = -1) -> bytes:
        data = self.response.read(size)
        if self.remaining is not None:
            self.remaining -= len(data)
            if not data and size != 0 and self.remaining > 0:
                raise ConnectionError(f"connection closed with {self.remaining} bytes of the response unread")
        return data

    def close(self) -> None:
        self.response.close()


def _members(tar: tarfile.TarFile, start: int, base: int) -> Iterator[tarfile.TarInfo]:
    """Headers of the regular, non-metadata members from ``start`` on (their data is not read yet)."""
    while (info := tar.next()) is not None:
        tar.members.clear()  # tarfile remembers every member it read: keep memory flat over big shards
        if base + info.offset >= start and info.isreg() and not SKIP_META.match(info.name):
            yield info  # in stream mode tarfile reads past the data of members skipped here


class _Damage(Exception):
    """A read that failed: the error, and the part of the sample read before it (None if nothing)."""

    def __init__(self, error: BaseException, partial: dict | None) -> None:
        super().__init__(error)
        self.error, self.partial = error, partial


def _group(tar: tarfile.TarFile, url: str, start: int, base: int, stats: ReadStats) -> Iterator[dict]:
    """Consecutive members sharing a key -> one sample dict (webdataset's group_by_keys, plus offsets).

    A sample is handed out as soon as the next member's header shows another key, before that
    member's data is read: a reader that stops after one sample reads one header more, not a member.
    """
    sample: dict | None = None
    try:
        for info in _members(tar, start, base):
            prefix, suffix = base_plus_ext(info.name)
            if prefix is None:
                continue
            suffix = suffix.lower()
            if sample is None or prefix != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": prefix, "__url__": url, "__offset__": base + info.offset}
            if suffix in sample:
                raise ValueError(f"{info.name}: duplicate file name in tar file")
            stats.members += 1
            if info.size > MAX_MEMBER_BYTES:  # tarfile steps over its data to the next header
                sample["__oversized__"] = f"{info.name} holds {info.size} bytes (limit {MAX_MEMBER_BYTES})"
                sample[suffix] = b""
            else:
                sample[suffix] = tar.extractfile(info).read()  # type: ignore[union-attr]  # regular: has data
            sample["__end__"] = base + _member_end(info)
    except Exception as exn:
        raise _Damage(exn, sample if sample is not None and "__end__" in sample else None) from exn
    if sample is not None:
        yield sample


def iter_samples(url: str, start: int, stats: ReadStats) -> Iterator[dict]:
    """Samples of the tar ``url`` from byte ``start`` (0 or a sample's ``__offset__`` / ``__end__``).

    Each is a dict: __key__, __url__, __offset__, __end__ and one bytes value per extension. A
    remote read that fails is reopened at the sample it was reading (see the module docstring);
    damage that stays ends the iteration with its error, after the part of a sample read before it.
    """
    position, failures = start, 0
    while True:
        try:
            for sample in _read_once(url, position, stats):
                position, failures = sample["__end__"], 0
                yield sample
            return
        except _Damage as damage:
            if is_local(url) or failures >= RETRIES or not _transient(damage.error):
                if damage.partial is not None:  # members read before the damage: the decoder judges them
                    yield damage.partial
                raise damage.error from None
            failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)  # spread workers
            log.warning("data: %s at byte %d of %s (%s); retry %d of %d in %.1f s", type(damage.error).__name__,
                        position, url, str(damage.error)[:200], failures, RETRIES, delay)
            time.sleep(delay)


def _read_once(url: str, start: int, stats: ReadStats) -> Iterator[dict]:
    """One attempt: samples from ``start`` over one connection; any failure is raised as _Damage."""
    try:
        tar, raw, base = _open(url, start, stats)
    except Exception as exn:  # noqa: BLE001 - the caller decides between retrying and damage
        raise _Damage(exn, None) from exn
    finished = False
    try:
        yield from _group(tar, url, start, base, stats)
        finished = True
    finally:
        if not finished:
            _close_quietly(raw)  # stopped early or failing already: a pipe's exit status is noise now
    try:
        raw.close()  # webdataset's pipe object raises here when the command failed
    except Exception as exn:  # noqa: BLE001
        raise _Damage(exn, None) from exn


def _transient(error: BaseException) -> bool:
    """Worth reading again: I/O and tar errors (a cut connection shows as either), timeouts,
    failed commands, HTTP 5xx/408/429. Not: other HTTP statuses, a duplicate member name."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in TRANSIENT_HTTP
    return isinstance(error, (OSError, EOFError, tarfile.TarError, http.client.HTTPException))


def _close_quietly(raw: IO[bytes]) -> None:
    try:
        getattr(raw, "abort", raw.close)()
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
            except Exception:  # noqa: BLE001 - nothing there (StopIteration too): reported below as missing
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
