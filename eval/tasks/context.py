"""What every task gets: the encoder, run settings, and the shared feature / classifier caches."""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clip_pretrain.eval.datasets import EvalDataset
from clip_pretrain.eval.distributed import current_ranks
from clip_pretrain.eval.encoder import Encoder
from clip_pretrain.eval.features import FeatureCache, ImageFeatures, extract_image_features
from clip_pretrain.eval.zeroshot import build_classifier

# Module-level so that consecutive suites (training evaluates step after step) share them; both
# keep entries of the most recent model_id only.
FEATURES = FeatureCache()
_classifiers: dict[tuple, torch.Tensor] = {}


@dataclass
class TaskContext:
    encoder: Encoder
    device: str | torch.device = "cpu"
    batch_size: int = 64
    workers: int = 0
    model_id: str | None = None  # identifies the weights; None: no caching beyond this context
    cache_dir: str | Path | None = None
    progress: bool = True
    notes: list[str] = field(default_factory=list)
    # Without a model_id, features are still shared between the tasks of one context (one suite run).
    run_id: str = field(default_factory=lambda: f"unnamed-{uuid.uuid4().hex}")

    def image_features(self, dataset: EvalDataset, kind: str, max_samples: int | None) -> ImageFeatures:
        """Features of `dataset`, computed once per (model_id, records, max_samples): tasks that read
        the same records (e.g. zero-shot, probe and retrieval on one shard split) share them."""
        key = {"records": dataset.cache_key, "max_samples": max_samples}
        return FEATURES.get(self.model_id or self.run_id, key, lambda: extract_image_features(
            self.encoder, dataset.records, batch_size=self.batch_size, workers=self.workers,
            max_samples=max_samples, desc=f"{kind} {dataset.name}", progress=self.progress),
            self.cache_dir if self.model_id is not None else None)

    def classifier(self, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """Zero-shot classifier [D, C], reused per (model_id, classnames, templates)."""
        build = lambda: build_classifier(self.encoder, classnames, templates,  # noqa: E731
                                         batch_size=max(self.batch_size, 256), progress=self.progress)
        if self.model_id is None:
            return build()
        key = (self.model_id, tuple(classnames), tuple(templates))
        if key in _classifiers:
            return _classifiers[key]
        path = None
        if self.cache_dir is not None:
            digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
            path = Path(self.cache_dir) / f"classifier-{digest}.pt"
        if path is not None and path.is_file():
            classifier = torch.load(path, map_location="cpu", weights_only=True)
        else:
            classifier = build()
            if path is not None and current_ranks().is_main:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(classifier.cpu(), path)
        for stale in [k for k in _classifiers if k[0] != self.model_id]:
            del _classifiers[stale]
        _classifiers[key] = classifier
        return classifier

    def note(self, text: str) -> None:
        """A line for the output (e.g. which split was read by default), printed once per task."""
        if text and text not in self.notes:
            self.notes.append(text)
