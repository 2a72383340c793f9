"""Image-text retrieval: recall@1/5/10 both ways over every caption of every readable image."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clip_pretrain.eval.datasets import load_retrieval
from clip_pretrain.eval.features import encode_texts
from clip_pretrain.eval.metrics import retrieval_metrics

if TYPE_CHECKING:
    from clip_pretrain.eval.suite import TaskSpec
    from clip_pretrain.eval.tasks.context import TaskContext

OPTIONS = frozenset({"image_root"})
EXAMPLE_QUERIES, EXAMPLE_TOP_K = 6, 4  # kept in the record for pretrain.report's retrieval grid


def check(spec: TaskSpec) -> None:
    if spec.option("image_root") is not None and not isinstance(spec.option("image_root"), str):
        raise ValueError("image_root: must be a folder path")


def run(spec: TaskSpec, ctx: TaskContext) -> dict:
    dataset = load_retrieval(spec.data, spec.split, spec.option("image_root"))
    ctx.note(dataset.split_note)
    found = ctx.image_features(dataset, "retrieval", spec.max_samples)
    found.check_nonempty(dataset.name)
    captions = [caption for per_image in found.captions for caption in per_image]
    if not captions:
        raise ValueError(f"dataset {dataset.name}: no captions found; retrieval needs captions per image")
    owners = torch.tensor([i for i, per_image in enumerate(found.captions) for _ in per_image])
    text_features = encode_texts(ctx.encoder, captions, batch_size=ctx.batch_size)
    scores = text_features @ found.features.T  # fp32 [T, N]
    positives = torch.nn.functional.one_hot(owners, found.num_images).bool()
    return {"metrics": retrieval_metrics(scores, positives), "num_samples": found.num_images,
            "num_captions": len(captions), "skipped": found.skipped, "split": dataset.split,
            "images_per_s": found.images_per_s, "examples": examples(scores, owners, captions, found)}


def examples(scores: torch.Tensor, owners: torch.Tensor, captions: list[str], found) -> list[dict]:
    """Top-k images of a few caption queries spread evenly over the captions (text -> image):
    [{"query", "target" (key of the caption's image), "retrieved": [{"key", "caption", "score", "hit"}]}]."""
    if not found.keys:
        return []
    picks = torch.linspace(0, len(captions) - 1, min(EXAMPLE_QUERIES, len(captions))).round().long().unique()
    top = scores[picks].topk(min(EXAMPLE_TOP_K, found.num_images), dim=1)
    return [{"query": captions[row], "target": found.keys[int(owners[row])],
             "retrieved": [{"key": found.keys[image], "caption": (found.captions[image] or [""])[0],
                            "score": round(float(score), 4), "hit": image == int(owners[row])}
                           for score, image in zip(values.tolist(), indices.tolist())]}
            for row, values, indices in zip(picks.tolist(), top.values, top.indices)]
