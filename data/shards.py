"""The deterministic shard plans of the streaming loader: per-epoch order, rank x worker slots.

Specs are parsed in data.specs (the one owner, shared with eval and data.build); its names are
re-exported here because the loader and older callers import them from this module.
"""
from __future__ import annotations

import hashlib
import random
from typing import Sequence

from clip_pretrain.data.specs import Shard, Source, resolve_sources, resolve_spec  # noqa: F401 - re-exported


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any reprs (unlike ``hash()``, equal across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


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
