"""Streaming image-text loader over webdataset tar shards, with exactly-once epochs and exact resume.

Pipeline, per (rank, worker) slot, each stage a small generator:

  shard plan -> read tar (data.tarstream: samples tagged with their byte offsets)
    -> seeded shuffle buffer -> [cursor: items counted here] -> decode + transform
    -> caption choice + tokenize (+ MLM masking) -> batch

Epoch mode: in epoch ``e`` the shards of all sources are permuted with seed (seed, e) and dealt
out strided: rank ``r`` gets ``order[r::world_size]`` and its worker ``w`` gets every
``num_workers``-th of those. Every shard is read by exactly one slot per epoch and the shuffle
buffer is seeded per (seed, e, rank, worker) and drained at the end of the epoch, so each epoch's
samples appear exactly once across ranks x workers. Each slot's stream is infinite: after its
part of epoch e it continues with its part of e+1, and batches run on across the boundary.
Shard counts and sizes need not be even: ranks (and workers) whose part of an epoch is shorter
drift into the next epoch sooner. No rank ever waits for another, every rank yields batches
forever (training is driven by a sample budget), and each epoch's stream is still exactly-once;
only the moment at which a slot moves on differs. ``loader.epoch`` is the oldest epoch any of
this rank's workers is still reading.

Resampled mode: each slot draws shards with replacement, first a source by its mixing weight,
then a shard uniformly within it, from an RNG seeded by (seed, rank, worker).

Shards are local tars, ``http(s)://`` and ``s3://`` URLs or ``pipe:`` commands (data.tarstream):
a remote read that fails is reopened at the sample it was reading, with bounded retries and
back-off, so a dropped connection neither loses nor repeats samples.

Exact resume: a worker's stream up to the decode stage depends only on (seed, rank, worker,
shards). Its *cursor* counts the items taken from the shuffle buffer (including ones later skipped)
and seeds each sample's augmentation and each batch's MLM mask. Where the stream stands after a
cursor is a small ``SlotStream.state()``: the epoch, the shard being read (its number in the slot's
part of the epoch, or the draw in resampled mode) and the byte offset of its next sample, the
shuffle and draw RNG states as ints, the drain progress, and for every item the shuffle buffer holds
a reference (shard index, byte offset of the sample's first tar member, caption round), not its
bytes. Workers send cursor, epoch, skip counts and that state with every batch; the main process
keeps, per logical worker, those of the last batch it handed out, plus the number of batches
handed out. On resume each worker re-reads the held samples (one seek each in a local tar) and
seeks the current shard to the offset, so the cost is the shuffle buffer plus the rest of one
shard, whatever the position (``shard_reads`` counts it). A version-1 state (cursor only) is
replayed from the start of the stream instead. torch's DataLoader hands batches out round-robin
from physical worker 0, so physical worker ``p`` plays logical worker ``(p + batches) % num_workers``:
the logical worker next in line is served first, as in the uninterrupted run.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clip_pretrain.data.decode import decode_image, resize_target
from clip_pretrain.data.device_decode import DECODES, CropPlan, EncodedImage, collate, prepare
from clip_pretrain.data.masking import IGNORE_INDEX, mask_tokens
from clip_pretrain.data.tarstream import ReadStats, iter_samples, read_samples_at
from clip_pretrain.data.shards import (
    Shard, Source, derive_seed, epoch_order, rank_shard_count, resolve_sources, slot_shards,
)

log = logging.getLogger(__name__)

MODES = ("epoch", "resampled")
SKIP = "__skip__"  # marker items carry the skip reason under this key
MAX_CONSECUTIVE_SKIPS = 10_000  # then the data is broken, not noisy: fail instead of spinning
WARN_PER_REASON = 10  # per worker; later skips of a reason are only counted


@dataclass
class DataConfig:
    """Training data. ``train``: a spec, a list of specs (pooled), or a list of
    ``{"spec": str, "weight": float}`` (weighted mixing, resampled mode)."""

    train: Any = None
    split: str = "train"
    mode: str = "epoch"
    workers: int = 2
    shuffle_buffer: int = 1000
    fast_decode: bool = True
    decode: str = "cpu"  # "gpu": workers ship JPEG bytes + crops, the trainer decodes (data.device_decode)
    image_key: str = "jpg"
    caption_key: str = "txt"
    multi_caption: bool = True  # pick one of json["captions"] per (seed, epoch, key)
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        _check_train(self.train, self.mode)
        if self.split not in ("train", "val"):
            raise ValueError(f"split: {self.split!r} is not a split; use 'train' or 'val'")
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is unknown; use 'epoch' or 'resampled'")
        if self.decode not in DECODES:
            raise ValueError(f"decode: {self.decode!r} is unknown; use 'cpu' or 'gpu'")
        for name in ("workers", "shuffle_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: must be an int >= 0, got {value!r}")
        if not isinstance(self.prefetch_factor, int) or self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor: must be an int >= 1, got {self.prefetch_factor!r}")
        for name in ("fast_decode", "multi_caption"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        for name in ("image_key", "caption_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: must be a non-empty string (a file extension in the shards)")


def _check_train(train: Any, mode: str) -> None:
    if isinstance(train, str):
        if not train.strip():
            raise ValueError("train: empty shard spec; set it to a shard directory, brace pattern or .tar path")
        return
    if not isinstance(train, (list, tuple)) or not train:
        raise ValueError(f"train: expected a spec string or a non-empty list of specs, got {train!r}")
    if all(isinstance(entry, str) and entry.strip() for entry in train):
        return
    for entry in train:
        if not (isinstance(entry, dict) and isinstance(entry.get("spec"), str) and set(entry) <= {"spec", "weight"}):
            raise ValueError(f"train: bad entry {entry!r}; use all spec strings or all {{spec: str, weight: float}}")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise ValueError(f"train: weight of {entry['spec']!r} must be a number > 0, got {weight!r}")
    if mode == "epoch" and len({float(e.get("weight", 1.0)) for e in train}) > 1:
        raise ValueError("train: mixing weights need mode 'resampled' (epoch mode reads every sample once)")


# ----------------------------------------------------------------------------- stream stages


def _skip_item(reason: str, url: str, key: str, detail: str) -> dict:
    return {SKIP: reason, "__url__": url, "__key__": key, "detail": detail}


class BarrenGuard:
    """Fails after ``limit`` shards in a row without a single sample (empty or unreadable data):
    an infinite stream over such shards would otherwise spin forever without yielding."""

    def __init__(self, limit: int, barren: int = 0) -> None:
        self.limit, self.barren = limit, barren

    def update(self, got_sample: bool, url: str) -> None:
        self.barren = 0 if got_sample else self.barren + 1
        if self.barren > self.limit:
            raise RuntimeError(f"no samples in {self.barren} shards in a row (last {url}); check the shards")


class ShuffleBuffer:
    """Seeded reservoir shuffle whose whole state (items held, RNG, drain progress) can be saved.

    Fill ``size`` items, then emit a random held item per new one; when the input ends, shuffle
    what is held and emit it in that order ("draining"). ``size`` <= 1 passes items through.
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng = size, rng
        self.items: list[dict] = []
        self.draining, self.drained = False, 0

    def run(self, items: Iterable[dict]) -> Iterator[dict]:
        if self.size <= 1:
            yield from items
            return
        if not self.draining:  # a buffer restored while draining must not touch its (ended) input
            for item in items:
                if len(self.items) < self.size:
                    self.items.append(item)
                    continue
                index = self.rng.randrange(self.size)
                self.items[index], item = item, self.items[index]
                yield item
            self.rng.shuffle(self.items)
            self.draining = True
        while self.drained < len(self.items):
            item, self.items[self.drained] = self.items[self.drained], {}  # drop the bytes once handed out
            self.drained += 1
            yield item

    def held(self) -> list[dict]:
        """The items still to come out, in buffer order."""
        return self.items[self.drained:]

    def restore(self, items: list[dict], draining: bool) -> None:
        self.items, self.draining, self.drained = items, draining, 0


@dataclass
class ReadPosition:
    """Where a slot's shard reader stands. ``index``: the shard's number in the slot's part of the
    epoch (resampled mode: the draw number); ``shard``: its index in ``StreamPlan.all_shards`` (-1:
    not drawn yet); ``offset``: byte offset of the next sample in it; ``last_key``: the last sample
    read from it ("" if none), so damage after a resume is still "truncated_tar"."""

    index: int = 0
    shard: int = -1
    offset: int = 0
    last_key: str = ""


def _rng_ints(rng: random.Random) -> list[int]:
    """The Mersenne Twister state as plain ints (checkpoints load with torch.load(weights_only=True))."""
    version, internal, _gauss = rng.getstate()  # gauss_next stays None: no stage draws Gaussians
    return [version, *internal]


def _rng_from_ints(ints: list[int]) -> random.Random:
    rng = random.Random()
    rng.setstate((int(ints[0]), tuple(int(i) for i in ints[1:]), None))
    return rng


RNG_INTS = len(_rng_ints(random.Random()))  # 626: version, 624 state words, position
STREAM_FIELDS = ("epoch", "index", "shard", "offset", "last_key", "barren", "draining", "shuffle_rng",
                 "draw_rng", "held", "markers")


class SlotStream:
    """The infinite item stream of one (rank, worker) slot, before decode; ``state()`` describes it
    after the last item taken, and a SlotStream built from that state continues identically, reading
    only the items the shuffle buffer held and the rest of the shard being read (its tar is seeked)."""

    def __init__(self, plan: StreamPlan, worker: int, saved: dict | None = None) -> None:
        self.plan, self.worker = plan, worker
        self.shards = plan.all_shards
        self.stats = ReadStats()
        self.epoch, self.pos = 0, ReadPosition()
        self.guard = BarrenGuard(2 * len(self.shards) + 8)
        self.draw_rng = random.Random(derive_seed("resample", plan.seed, plan.rank, worker))
        self.shuffle = ShuffleBuffer(plan.shuffle_buffer, self._shuffle_rng(0))
        if saved is not None:
            self._restore(saved)

    def _shuffle_rng(self, epoch: int) -> random.Random:
        return random.Random(derive_seed(self.plan.seed, epoch, self.plan.rank, self.worker))

    def __iter__(self) -> Iterator[dict]:
        if self.plan.mode == "resampled":
            yield from self.shuffle.run(self._draws())
            return
        while True:
            yield from self.shuffle.run(self._epoch_part())
            # The next epoch starts only when its first item is asked for, so a state taken after
            # the last item of this epoch still names this epoch, drained.
            self.epoch, self.pos = self.epoch + 1, ReadPosition()
            self.shuffle = ShuffleBuffer(self.plan.shuffle_buffer, self._shuffle_rng(self.epoch))

    def _epoch_part(self) -> Iterator[dict]:
        """Items of this slot's shards of ``self.epoch``, from ``self.pos`` on."""
        # The plan is computed on shard indices (the permutation depends only on the count), so
        # positions and held items name shards by their index in all_shards.
        order = epoch_order(list(range(len(self.shards))), self.plan.seed, self.epoch)  # type: ignore[arg-type]
        part = slot_shards(order, self.plan.rank, self.plan.world_size, self.worker, self.plan.num_slots)
        while self.pos.index < len(part):
            self.pos.shard = part[self.pos.index]  # type: ignore[assignment]
            yield from self._read_shard(self.epoch)

    def _draws(self) -> Iterator[dict]:
        """Resampled mode: forever draw a source by weight, then a shard uniformly within it."""
        sources = self.plan.sources
        weights = [source.weight for source in sources]
        starts = list(itertools.accumulate((len(s.shards) for s in sources), initial=0))
        while True:
            if self.pos.shard < 0:  # choices/choice on ranges draw exactly as on the sequences themselves
                source = self.draw_rng.choices(range(len(sources)), weights=weights)[0]
                self.pos.shard = starts[source] + self.draw_rng.choice(range(len(sources[source].shards)))
            yield from self._read_shard(self.pos.index)

    def _read_shard(self, round_: int) -> Iterator[dict]:
        """Samples of the shard at ``self.pos`` from its offset on; damage ends it with one skip marker
        ("unreadable_shard" when nothing was read from it, else "truncated_tar")."""
        shard, url = self.pos.shard, self.shards[self.pos.shard].url
        failure: Exception | None = None
        try:
            for sample in iter_samples(url, self.pos.offset, self.stats):
                self.pos.offset, self.pos.last_key = sample["__end__"], sample["__key__"]
                yield self._tag(sample, shard, round_)
        except Exception as exn:  # noqa: BLE001 - a shard's damage is counted, never fatal
            failure = exn
        last_key = self.pos.last_key
        # Move on before handing out the marker: a state taken after it must not read this shard again.
        self.pos = ReadPosition(index=self.pos.index + 1)
        self.guard.update(bool(last_key), url)
        if failure is not None:
            reason = "truncated_tar" if last_key else "unreadable_shard"
            detail = f"{type(failure).__name__}: {failure.args[0] if failure.args else ''}"[:200]
            marker = _skip_item(reason, url, f"after {last_key}" if last_key else "-", detail)
            yield marker | {"__epoch__": self.epoch, "__round__": round_, "__ref__": [shard, -1, round_]}

    def _tag(self, sample: dict, shard: int, round_: int) -> dict:
        """Epoch and caption round for the decoder, and the (shard, offset, round) reference a state keeps."""
        offset = sample.pop("__offset__")
        sample.pop("__end__")
        sample.update(__epoch__=self.epoch, __round__=round_, __ref__=[shard, offset, round_])
        return sample

    def state(self) -> dict:
        """Plain ints/strs/lists: where the reader stands, the RNGs, and references to the held items."""
        held = self.shuffle.held()
        return {
            "epoch": self.epoch, "index": self.pos.index, "shard": self.pos.shard, "offset": self.pos.offset,
            "last_key": self.pos.last_key, "barren": self.guard.barren, "draining": self.shuffle.draining,
            "shuffle_rng": _rng_ints(self.shuffle.rng),
            "draw_rng": _rng_ints(self.draw_rng) if self.plan.mode == "resampled" else [],
            "held": [item["__ref__"] for item in held],
            "markers": [[i, item[SKIP], item["__key__"], item["detail"]] for i, item in enumerate(held) if SKIP in item],
        }

    def _restore(self, saved: dict) -> None:
        self.epoch = int(saved["epoch"])
        self.pos = ReadPosition(int(saved["index"]), int(saved["shard"]), int(saved["offset"]), str(saved["last_key"]))
        self.guard.barren = int(saved["barren"])
        if saved["draw_rng"]:
            self.draw_rng = _rng_from_ints(saved["draw_rng"])
        self.shuffle = ShuffleBuffer(self.plan.shuffle_buffer, _rng_from_ints(saved["shuffle_rng"]))
        self.shuffle.restore(self._read_held(saved["held"], saved["markers"]), bool(saved["draining"]))

    def _read_held(self, refs: list[list[int]], markers: list[list]) -> list[dict]:
        """The held items again: samples re-read at their offsets (one seek each), markers rebuilt."""
        offsets: dict[int, list[int]] = {}
        for shard, offset, _round in refs:
            if offset >= 0:
                offsets.setdefault(int(shard), []).append(int(offset))
        samples = {shard: read_samples_at(self.shards[shard].url, wanted, self.stats)
                   for shard, wanted in offsets.items()}
        marker_at = {int(i): (reason, key, detail) for i, reason, key, detail in markers}
        items = []
        for i, (shard, offset, round_) in enumerate(refs):
            shard, offset, round_ = int(shard), int(offset), int(round_)
            if offset < 0:
                reason, key, detail = marker_at[i]
                marker = _skip_item(str(reason), self.shards[shard].url, str(key), str(detail))
                items.append(marker | {"__epoch__": self.epoch, "__round__": round_, "__ref__": [shard, -1, round_]})
            else:  # a copy: in resampled mode one sample can be held twice, from two draws of its shard
                items.append(self._tag(dict(samples[shard][offset]), shard, round_))
        return items


@dataclass(frozen=True)
class StreamPlan:
    """Everything that fixes the per-slot item streams (picklable, sent to workers)."""

    sources: tuple[Source, ...]
    mode: str
    seed: int
    rank: int
    world_size: int
    num_slots: int  # workers of this rank; 1 when loading in-process
    shuffle_buffer: int

    @property
    def all_shards(self) -> list[Shard]:
        return [shard for source in self.sources for shard in source.shards]

    def items(self, worker: int) -> Iterator[dict]:
        """The infinite, deterministic item stream of logical ``worker`` (before decode)."""
        return iter(SlotStream(self, worker))


# ----------------------------------------------------------------------------- decode + batch


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is the skip-count key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class SampleDecoder:
    """Raw sample dict -> (image tensor [3, H, W], caption) in the worker; raises SkipSample."""

    preprocess: Callable
    image_key: str
    caption_key: str
    multi_caption: bool
    seed: int
    draft_side: int | None
    crop_plan: CropPlan | None = None  # data.decode=gpu: JPEGs leave as bytes + crop (data.device_decode)

    def __call__(self, sample: dict, augment_seed: int) -> tuple[torch.Tensor | EncodedImage, str]:
        """``augment_seed`` seeds torch's RNG for the random transforms (restored afterwards, so
        in-process loading leaves the training RNG alone): resumed runs get identical images."""
        if self.image_key not in sample or not {self.caption_key, "json"} & sample.keys():
            # e.g. the last sample before the damage in a truncated tar
            raise SkipSample("incomplete_sample", f"has only {sorted(k for k in sample if not k.startswith('__'))}")
        if "__oversized__" in sample:  # left unread by the tar reader (data.tarstream.MAX_MEMBER_BYTES)
            raise SkipSample("oversized_member", sample["__oversized__"])
        caption = self.caption(sample)
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed also seeds every accelerator backend (~1 ms).
            torch.default_generator.manual_seed(augment_seed)
            try:
                if self.crop_plan is not None and (encoded := prepare(sample[self.image_key], self.crop_plan)):
                    return encoded, caption
                image = decode_image(sample[self.image_key], self.draft_side if self.crop_plan is None else None)
            except Exception as exn:  # PIL raises OSError, ValueError, SyntaxError, ... on bad bytes
                raise SkipSample("corrupt_image", repr(exn)[:200]) from None
            try:
                return self.preprocess(image), caption
            except Exception as exn:  # e.g. degenerate sizes that decode but cannot be resized
                raise SkipSample("bad_image", repr(exn)[:200]) from None

    def caption(self, sample: dict) -> str:
        """One caption: from json["captions"] chosen by (seed, round, key) when there are several."""
        captions: list[str] = []
        if self.multi_caption and "json" in sample:
            try:
                stored = json.loads(sample["json"]).get("captions", [])
                captions = [c for c in stored if isinstance(c, str) and c.strip()]
            except (ValueError, AttributeError) as exn:
                raise SkipSample("corrupt_json", repr(exn)[:200]) from None
        if len(captions) > 1:
            rng = random.Random(derive_seed("caption", self.seed, sample["__round__"], sample["__key__"]))
            return rng.choice(captions)
        if captions:
            return captions[0]
        text = sample.get(self.caption_key, b"").decode("utf-8", errors="replace").strip()
        if not text:
            raise SkipSample("empty_caption", f"no .{self.caption_key} text")
        return text


@dataclass(frozen=True)
class MaskSpec:
    probability: float
    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]


@dataclass
class WorkerState:
    """Per logical worker: cursor (items consumed), current epoch, cumulative skips by reason, and
    the stream's own state (``SlotStream.state()``) after the cursor's item; None before the first
    batch, or from a version-1 checkpoint, which knew only the cursor."""

    cursor: int = 0
    epoch: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stream: dict | None = None

    def to_dict(self) -> dict:
        return {"cursor": self.cursor, "epoch": self.epoch, "skipped": dict(self.skipped), "stream": self.stream}


class StreamDataset(IterableDataset):
    """Yields batches (dicts) with a "_meta" entry that the StreamingLoader strips off."""

    def __init__(self, plan: StreamPlan, decoder: SampleDecoder, tokenizer: Callable, batch_size: int,
                 mask: MaskSpec | None, states: Sequence[WorkerState], batches_handed_out: int) -> None:
        self.plan, self.decoder, self.tokenizer, self.batch_size = plan, decoder, tokenizer, batch_size
        self.mask, self.states, self.batches_handed_out = mask, list(states), batches_handed_out

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical, physical_count = (info.id, info.num_workers) if info else (0, 1)
        if physical_count != self.plan.num_slots:
            raise RuntimeError(f"expected {self.plan.num_slots} workers, DataLoader started {physical_count}")
        worker = (physical + self.batches_handed_out) % physical_count
        state = self.states[worker]
        stream = SlotStream(self.plan, worker, state.stream)  # re-reads only what its shuffle buffer held
        items = iter(stream)
        if state.stream is None:
            # A version-1 checkpoint: replay the stream up to the cursor without decoding it.
            for _ in itertools.islice(items, state.cursor):
                pass
        return self._batch_stream(stream, items, worker, state.cursor, Counter(state.skipped))

    def _batch_stream(self, stream: SlotStream, items: Iterator[dict], worker: int, cursor: int,
                      skipped: Counter) -> Iterator[dict]:
        images, captions, keys = [], [], []
        consecutive_skips, epoch = 0, 0
        for item in items:
            cursor += 1
            epoch = item["__epoch__"]
            try:
                if SKIP in item:
                    raise SkipSample(item[SKIP], item["detail"])
                augment_seed = derive_seed("augment", self.plan.seed, self.plan.rank, worker, cursor)
                image, caption = self.decoder(item, augment_seed)
            except SkipSample as skip:
                consecutive_skips += 1
                self._count_skip(skipped, skip, item, consecutive_skips)
                continue
            consecutive_skips = 0
            images.append(image)
            captions.append(caption)
            keys.append(item["__key__"])
            if len(keys) == self.batch_size:
                # The stream is suspended right after this batch's last item: its state is the position.
                meta = {"worker": worker, "cursor": cursor, "epoch": epoch, "skipped": dict(skipped),
                        "stream": stream.state(), "reads": stream.stats.as_dict()}
                yield self._collate(images, captions, keys, worker, cursor) | {"_meta": meta}
                images, captions, keys = [], [], []

    def _count_skip(self, skipped: Counter, skip: SkipSample, item: dict, consecutive: int) -> None:
        skipped[skip.reason] += 1
        if skipped[skip.reason] <= WARN_PER_REASON:
            log.warning("data: skipped %s in %s key %s: %s%s", skip.reason, item.get("__url__"), item.get("__key__"),
                        skip, " (further skips of this reason are only counted)"
                        if skipped[skip.reason] == WARN_PER_REASON else "")
        if consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise RuntimeError(f"{consecutive} samples in a row skipped (last: {skip.reason} in {item.get('__url__')});"
                               " check the shards")

    def _collate(self, images: list, captions: list[str], keys: list[str], worker: int, cursor: int) -> dict:
        """images [B, 3, H, W], texts [B, L] (+ mlm_input_ids, mlm_labels [B, L], mlm_positions [M])."""
        texts = self.tokenizer(captions)
        plan = self.decoder.crop_plan
        batch = {"texts": texts, "keys": list(keys), **(collate(images, plan) if plan else {"images": torch.stack(images)})}
        if self.mask is not None:
            # Seeded by the stream position, so a resumed run masks exactly like the original.
            mlm_seed = derive_seed("mlm", self.plan.seed, self.plan.rank, worker, cursor)
            generator = torch.Generator().manual_seed(mlm_seed)
            batch["mlm_input_ids"], batch["mlm_labels"] = mask_tokens(
                texts, mask_token_id=self.mask.mask_token_id, vocab_size=self.mask.vocab_size,
                special_ids=self.mask.special_ids, generator=generator, probability=self.mask.probability)
            # Flat indices of the masked tokens, found here on the CPU: the model gathers them with
            # an index tensor, where a boolean mask on the device would need a blocking size read.
            batch["mlm_positions"] = (batch["mlm_labels"].flatten() != IGNORE_INDEX).nonzero().flatten()
        return batch


# ----------------------------------------------------------------------------- the loader


class StreamingLoader:
    """Infinite iterable of batches for one rank; ``state_dict()`` / ``load_state_dict()`` resume exactly.

    Iterating again (or after ``load_state_dict``) continues from the last batch handed out.
    """

    STATE_VERSION = 2  # 2: each worker's stream state (seek on resume); 1: cursors only (replayed on resume)

    def __init__(self, plan: StreamPlan, dataset_args: dict, prefetch_factor: int, use_processes: bool,
                 pin_memory: bool = False) -> None:
        self.plan = plan
        self._dataset_args, self._prefetch_factor, self._use_processes = dataset_args, prefetch_factor, use_processes
        self._pin_memory = pin_memory
        self._states = [WorkerState() for _ in range(plan.num_slots)]
        self._reads = [ReadStats() for _ in range(plan.num_slots)]
        self._batches = 0

    @property
    def num_workers(self) -> int:
        """DataLoader worker processes (0: decoding runs in the calling process)."""
        return self.plan.num_slots if self._use_processes else 0

    @property
    def skipped(self) -> dict[str, int]:
        """Cumulative skipped samples by reason, for this rank, up to the last batch handed out."""
        total: Counter = Counter()
        for state in self._states:
            total.update(state.skipped)
        return dict(total)

    @property
    def epoch(self) -> int:
        """The oldest epoch any worker of this rank is still reading (0 in resampled mode)."""
        return min(state.epoch for state in self._states)

    @property
    def samples_per_epoch(self) -> int | None:
        """Samples in one epoch over all ranks (from the manifests), or None when not known."""
        counts = [shard.count for shard in self.plan.all_shards]
        return None if any(c is None for c in counts) else sum(counts)

    @property
    def shard_reads(self) -> dict[str, int]:
        """Tar bytes read and members opened by this rank's workers since this iteration started
        (the resume's re-reads included), up to the last batch handed out."""
        return {"bytes": sum(r.bytes for r in self._reads), "members": sum(r.members for r in self._reads)}

    @property
    def batches_handed_out(self) -> int:
        return self._batches

    def __iter__(self) -> Iterator[dict]:
        self._reads = [ReadStats() for _ in range(self.plan.num_slots)]
        dataset = StreamDataset(self.plan, states=[WorkerState(**s.to_dict()) for s in self._states],
                                batches_handed_out=self._batches, **self._dataset_args)
        if self._use_processes:
            # Own generator: a DataLoader draws its workers' base seed from the global torch RNG when
            # iterated, which would shift the trainer's dropout masks after a resume. Workers seed
            # every sample themselves, so this seed does not matter.
            stream: Iterable[dict] = DataLoader(dataset, batch_size=None, num_workers=self.plan.num_slots,
                                                prefetch_factor=self._prefetch_factor, in_order=True,
                                                pin_memory=self._pin_memory, generator=torch.Generator(),
                                                worker_init_fn=_shield_from_launcher_signals)
        else:
            stream = dataset
        for batch in stream:
            self._record(batch.pop("_meta"))
            yield batch

    def _record(self, meta: dict) -> None:
        expected = self._batches % self.plan.num_slots
        if meta["worker"] != expected:  # round-robin order broken: resume would not be exact
            raise RuntimeError(f"batch from worker {meta['worker']}, expected worker {expected}")
        self._states[expected] = WorkerState(meta["cursor"], meta["epoch"], dict(meta["skipped"]), meta["stream"])
        self._reads[expected] = ReadStats(**meta["reads"])
        self._batches += 1

    def position(self) -> tuple:
        """An O(workers) snapshot of where the stream stands, for ``state_dict(position)`` later
        (a consumer that fetches ahead saves the position of the last batch it really used)."""
        return tuple(self._states), self._batches

    def state_dict(self, position: tuple | None = None) -> dict:
        """Plain ints/strs/lists (safe for torch.save with weights_only loading); at ``position``
        (from ``position()``) or after the last batch handed out."""
        states, batches = position if position is not None else self.position()
        return {
            "version": self.STATE_VERSION, "mode": self.plan.mode, "seed": self.plan.seed, "rank": self.plan.rank,
            "world_size": self.plan.world_size, "num_slots": self.plan.num_slots,
            "shuffle_buffer": self.plan.shuffle_buffer, "shards": len(self.plan.all_shards), "shard_digest": derive_seed([s.url for s in self.plan.all_shards]),
            "batches": batches, "workers": [state.to_dict() for state in states],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the last batch recorded in ``state``; the stream setup must match.

        A version-1 state (cursors only, written before streams could seek) still loads: its workers
        replay their streams up to the cursor once, reading every tar they had read before.
        """
        mine = self.state_dict()
        if state.get("version") not in (1, self.STATE_VERSION):
            raise ValueError(f"data state: version {state.get('version')!r} is unknown (this code reads 1 and "
                             f"{self.STATE_VERSION}); resume with the code that wrote the checkpoint")
        names = ["mode", "seed", "rank", "world_size", "num_slots", "shards", "shard_digest"]
        if state["version"] >= 2:  # version 1 did not record it
            names.append("shuffle_buffer")
        for name in names:
            if state.get(name) != mine[name]:
                raise ValueError(f"data state: {name} is {state.get(name)!r} in the checkpoint but {mine[name]!r}"
                                 " now; resume with the same shards, seed, mode, shuffle buffer, ranks and workers")
        self._states = [_worker_state(s, state["version"]) for s in state["workers"]]
        self._batches = int(state["batches"])
        if state["version"] == 1 and any(s.cursor for s in self._states):
            log.warning("data: version-1 loader state (cursors only): each worker re-reads its stream up to "
                        "its cursor once; checkpoints written from now on resume by seeking")


def _worker_state(saved: dict, version: int) -> WorkerState:
    """One worker's entry of a checkpoint; a stream state must carry every SlotStream field, with
    held-item references of 3 ints and a whole Mersenne Twister state (version + 624 words + index)."""
    stream = saved.get("stream") if version >= 2 else None
    if stream is not None:
        problem = _stream_state_problem(stream)
        if problem:
            raise ValueError(f"data state: a worker's stream state {problem}; the checkpoint is damaged: "
                             "resume from another step_* dir")
    return WorkerState(int(saved["cursor"]), int(saved["epoch"]), dict(saved["skipped"]), stream)


def _stream_state_problem(stream: object) -> str:
    if not isinstance(stream, dict) or set(STREAM_FIELDS) - set(stream):
        return f"lacks {sorted(set(STREAM_FIELDS) - set(stream)) if isinstance(stream, dict) else 'all fields'}"
    if any(not isinstance(ref, (list, tuple)) or len(ref) != 3 for ref in stream["held"]):
        return "has a held-item reference that is not (shard, offset, round)"
    if len(stream["shuffle_rng"]) != RNG_INTS or len(stream["draw_rng"]) not in (0, RNG_INTS):
        return f"has an RNG state that is not {RNG_INTS} ints"
    return ""


def _shield_from_launcher_signals(_worker_id: int) -> None:
    """A DataLoader worker leaves its parent's process group and ignores SIGINT / SIGUSR1.

    Launchers signal whole process groups (torchrun's killpg, a terminal's Ctrl-C); a worker that
    died of it would fail the trainer's next batch before the trainer could checkpoint. In a group
    of its own it only gets signals sent to it: the trainer handles the signal and shuts its
    workers down itself. SIGTERM keeps its default, because that is how the DataLoader (and
    multiprocessing at exit) ends a worker that does not stop when asked.
    """
    os.setpgid(0, 0)
    for stop in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(stop, signal.SIG_IGN)


def build_loader(
    cfg: DataConfig,
    *,
    batch_size: int,
    preprocess: Callable,
    tokenizer: Callable,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    mlm_probability: float | None = None,
    mask_token_id: int | None = None,
    vocab_size: int | None = None,
    pin_memory: bool = False,
) -> StreamingLoader:
    """The streaming loader of ``rank`` (batches of ``batch_size`` for this rank).

    Images come out as ``preprocess`` makes them: the trainer passes a transform ending in uint8
    (data.device.split_normalize) and normalises on the device. ``pin_memory``: the DataLoader
    pins batches for asynchronous copies to CUDA.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: {rank} is not in [0, world_size={world_size})")
    sources = tuple(resolve_sources(cfg.train, cfg.split))
    num_slots = _num_slots(cfg, sources, rank, world_size)
    plan = StreamPlan(sources, cfg.mode, seed, rank, world_size, num_slots, cfg.shuffle_buffer)
    decoder = SampleDecoder(preprocess, cfg.image_key, cfg.caption_key, cfg.multi_caption, seed,
                            resize_target(preprocess) if cfg.fast_decode else None,
                            CropPlan.from_transform(preprocess) if cfg.decode == "gpu" else None)
    mask = _mask_spec(tokenizer, mlm_probability, mask_token_id, vocab_size)
    dataset_args = {"decoder": decoder, "tokenizer": tokenizer, "batch_size": batch_size, "mask": mask}
    return StreamingLoader(plan, dataset_args, cfg.prefetch_factor, use_processes=cfg.workers > 0, pin_memory=pin_memory)


def _num_slots(cfg: DataConfig, sources: Sequence[Source], rank: int, world_size: int) -> int:
    """Worker slots of this rank: cfg.workers (1 in-process when 0), fewer if it has fewer shards."""
    wanted = max(cfg.workers, 1)
    if cfg.mode == "resampled":
        return wanted
    num_shards = sum(len(source.shards) for source in sources)
    if num_shards < world_size:
        raise ValueError(f"train: more ranks than shards in epoch mode ({world_size} ranks, {num_shards} shards);"
                         " write more shards or use mode 'resampled'")
    have = rank_shard_count(num_shards, rank, world_size)
    if have < wanted:
        log.warning("data: rank %d has %d shards per epoch, using %d workers instead of %d", rank, have, have, wanted)
    return min(wanted, have)


def _mask_spec(tokenizer: Callable, probability: float | None, mask_token_id: int | None,
               vocab_size: int | None) -> MaskSpec | None:
    if probability is None:
        return None
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mlm_probability: {probability} is not in (0, 1); use e.g. 0.15 or None for no MLM")
    vocab_size = vocab_size if vocab_size is not None else int(tokenizer.vocab_size)
    mask_token_id = mask_token_id if mask_token_id is not None else vocab_size
    specials = (tokenizer.sot_token_id, tokenizer.eot_token_id, int(getattr(tokenizer, "pad_token_id", None) or 0))
    return MaskSpec(probability, mask_token_id, vocab_size, specials)
