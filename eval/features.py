"""Embedding extraction: images decoded in DataLoader workers, sharded over ranks, cached per model.

Every evaluator consumes `ImageFeatures` (image embeddings in dataset order with their labels or
captions) and `encode_texts`; metrics are computed from those on every rank alike.

Sharding: global record i belongs to rank i % world_size (and, inside a rank, to DataLoader worker
j % workers of its j-th record). Ranks step in lockstep: each step every rank runs exactly one
forward, a padding batch when it has run out, because under ZeRO-3 a forward gathers weights
from all ranks. Padding rows are never kept, so counts and metrics equal a one-process run.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from clip_pretrain.eval.distributed import any_rank, current_ranks, gather_objects, gather_rows, sum_over_ranks
from clip_pretrain.eval.encoder import Encoder

DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for truncated/corrupt files


@dataclass
class ImageFeatures:
    """features [N, D] fp32 (readable images, dataset order), labels [N] (-1: none), captions per image."""

    features: torch.Tensor
    labels: torch.Tensor
    captions: list[list[str]]
    seen: int  # records read, readable or not
    skipped: int  # unreadable images
    seconds: float = 0.0  # wall time of decode + encode
    keys: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])

    @property
    def images_per_s(self) -> float:
        return self.seen / self.seconds if self.seconds > 0 else 0.0

    def check_nonempty(self, name: str) -> None:
        """Raise when nothing (readable) was found, so no metric is computed over zero samples."""
        if self.seen == 0:
            raise ValueError(f"dataset {name} is empty; check the path and split")
        if self.seen == self.skipped:
            raise ValueError(f"dataset {name}: all {self.seen} images were unreadable")

    def check_labelled(self, name: str) -> None:
        """Classification needs every image's class; records cached by a retrieval task may lack one."""
        missing = int((self.labels < 0).sum())
        if missing:
            raise ValueError(f"dataset {name}: {missing} images have no known class (cls or json label); "
                             f"add classnames beside the shards or fix the samples")

    def subset(self, rows: torch.Tensor) -> "ImageFeatures":
        """The images at `rows` (a [K] index tensor), counts reset to them."""
        index = rows.tolist()
        return ImageFeatures(self.features[rows], self.labels[rows], [self.captions[i] for i in index],
                             seen=len(index), skipped=0, keys=[self.keys[i] for i in index] if self.keys else [])


class RankShard(IterableDataset):
    """This rank's records, decoded and batched inside DataLoader workers.

    Yields dicts: indices [B] (global record positions), images [B, 3, H, W] or None, labels [B],
    captions (list per image), skipped (global positions of unreadable images).
    """

    def __init__(self, records: Iterable[Any], preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int,
                 *, rank: int = 0, world_size: int = 1, max_samples: int | None = None) -> None:
        self.records = records
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.max_samples = max_samples

    def _own(self) -> Iterator[tuple[int, Any]]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        records = islice(self.records, self.max_samples) if self.max_samples else self.records
        local = 0
        for index, record in enumerate(records):
            if index % self.world_size != self.rank:
                continue
            if local % workers == worker_id:
                yield index, record
            local += 1

    def __iter__(self) -> Iterator[dict]:
        batch: dict[str, list] = {"indices": [], "images": [], "labels": [], "captions": [], "keys": [], "skipped": []}
        for index, record in self._own():
            try:
                image = self.preprocess(record.load())
            except DECODE_ERRORS:
                batch["skipped"].append(index)
                continue
            batch["indices"].append(index)
            batch["images"].append(image)
            batch["labels"].append(record.label)
            batch["captions"].append(list(record.captions))
            batch["keys"].append(record.key)
            if len(batch["images"]) == self.batch_size:
                yield _collate(batch)
                batch = {name: [] for name in batch}
        if batch["indices"] or batch["skipped"]:
            yield _collate(batch)


def _collate(batch: dict[str, list]) -> dict:
    return {**batch, "indices": torch.tensor(batch["indices"], dtype=torch.long),
            "images": torch.stack(batch["images"]) if batch["images"] else None,
            "labels": torch.tensor(batch["labels"], dtype=torch.long)}


def padding_images(encoder: Encoder) -> torch.Tensor:
    """One preprocessed blank image [1, 3, H, W] for lockstep padding forwards."""
    return encoder.preprocess(Image.new("RGB", (64, 64)))[None]


def extract_image_features(encoder: Encoder, records: Iterable[Any], *, batch_size: int = 64, workers: int = 0,
                           max_samples: int | None = None, desc: str = "images",
                           progress: bool = True) -> ImageFeatures:
    """Embed this rank's share of `records` and gather every rank's rows in dataset order."""
    ranks = current_ranks()
    shard = RankShard(records, encoder.preprocess, batch_size, rank=ranks.rank, world_size=ranks.world_size,
                      max_samples=max_samples)
    loader = DataLoader(shard, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available())
    indices, features, labels, captions, keys, skipped = [], [], [], [], [], 0
    start = time.perf_counter()
    batches = iter(loader)
    total = len(records) if hasattr(records, "__len__") else None
    if total is not None and max_samples:
        total = min(total, max_samples)
    bar = tqdm(desc=desc, total=total, unit="img", disable=not (progress and ranks.is_main))
    while True:
        batch = next(batches, None)
        if not any_rank(batch is not None):
            break
        if batch is None or batch["images"] is None:
            if ranks.world_size > 1:
                encoder.encode_image(padding_images(encoder))  # lockstep forward, result dropped
            if batch is not None:
                skipped += len(batch["skipped"])
            continue
        features.append(encoder.encode_image(batch["images"]).float().cpu())
        indices.append(batch["indices"])
        labels.append(batch["labels"])
        captions.extend(batch["captions"])
        keys.extend(batch["keys"])
        skipped += len(batch["skipped"])
        bar.update((len(batch["indices"]) + len(batch["skipped"])) * ranks.world_size)
    bar.close()
    local = (torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
             torch.cat(features) if features else torch.empty(0, 0),
             torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    all_indices, all_features, all_labels, all_captions, all_keys = _gather_in_order(local, captions, keys)
    skipped = sum_over_ranks(skipped)
    return ImageFeatures(all_features, all_labels, all_captions, seen=all_indices.numel() + skipped,
                         skipped=skipped, seconds=time.perf_counter() - start, keys=all_keys)


def _gather_in_order(local: tuple[torch.Tensor, torch.Tensor, torch.Tensor], captions: list, keys: list) -> tuple:
    indices, features, labels = local
    dims = [int(d) for d in gather_objects(features.shape[1] if features.numel() else 0)]
    dim = max(dims)
    if features.numel() == 0:
        features = torch.empty(0, dim)
    all_indices = torch.cat(gather_rows(indices))
    all_features = torch.cat(gather_rows(features))
    all_labels = torch.cat(gather_rows(labels))
    all_captions = [c for part in gather_objects(captions) for c in part]
    all_keys = [k for part in gather_objects(keys) for k in part]
    order = all_indices.argsort()
    return (all_indices[order], all_features[order], all_labels[order],
            [all_captions[i] for i in order.tolist()], [all_keys[i] for i in order.tolist()])


def encode_texts(encoder: Encoder, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text features [T, D] (fp32, CPU), the texts sharded over ranks in lockstep."""
    if not texts:
        raise ValueError("texts: nothing to encode; captions or prompts are missing")
    ranks = current_ranks()
    own = texts[ranks.rank::ranks.world_size]
    # Every rank runs ceil(ceil(T / world) / batch) forwards; ranks with fewer texts pad with texts[0].
    steps = math.ceil(math.ceil(len(texts) / ranks.world_size) / batch_size)
    parts = []
    for step in range(steps):
        chunk = own[step * batch_size:(step + 1) * batch_size]
        out = encoder.encode_text(encoder.tokenizer(chunk or texts[:1])).float().cpu()
        if chunk:
            parts.append(out)
    # steps >= 1, so `out` exists on every rank and gives the width even to a rank with no texts.
    gathered = gather_rows(torch.cat(parts) if parts else out[:0])
    result = torch.empty(len(texts), out.shape[1])
    for rank, part in enumerate(gathered):
        result[rank::ranks.world_size] = part
    return result


class FeatureCache:
    """ImageFeatures per (model_id, dataset key): several tasks on one dataset encode it once.

    Memory holds the current model_id only (training evaluates step after step); `cache_dir`
    adds a copy on disk, written by rank 0.
    """

    def __init__(self) -> None:
        self.model_id: str | None = None
        self.entries: dict[str, ImageFeatures] = {}

    def get(self, model_id: str, key: dict, compute: Callable[[], ImageFeatures],
            cache_dir: str | Path | None = None) -> ImageFeatures:
        if model_id != self.model_id:
            self.model_id, self.entries = model_id, {}
        digest = hashlib.sha1(json.dumps([model_id, key], sort_keys=True, default=str).encode()).hexdigest()[:16]
        if digest in self.entries:
            return self.entries[digest]
        path = Path(cache_dir) / f"features-{digest}.pt" if cache_dir is not None else None
        if path is not None and path.is_file():
            found = _load(path)
        else:
            found = compute()
            if path is not None and current_ranks().is_main:
                _save(found, path)
        self.entries[digest] = found
        return found


def _save(found: ImageFeatures, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"features": found.features, "labels": found.labels, "captions": found.captions,
               "seen": found.seen, "skipped": found.skipped, "seconds": found.seconds, "keys": found.keys}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file


def _load(path: Path) -> ImageFeatures:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return ImageFeatures(payload["features"], payload["labels"], payload["captions"], seen=payload["seen"],
                         skipped=payload["skipped"], seconds=payload["seconds"], keys=payload["keys"])
