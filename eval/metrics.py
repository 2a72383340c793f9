"""Pure evaluation metrics over score matrices (no models, no I/O).

Classification follows open_clip / CLIP_benchmark (top-k via torch.topk, mean per-class recall
= balanced accuracy of the top-1 prediction). Retrieval follows CLIP_benchmark's
`zeroshot_retrieval.recall_at_k`: a query is a hit at k when any of its positives is among the
top k, with one deliberate difference: ties are broken against the model (a positive tied with a
negative ranks below it), so a degenerate model with equal scores never looks good.
"""
from __future__ import annotations

import torch

RECALL_KS = (1, 5, 10)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """logits [N, C], labels [N] -> fraction of rows whose label is among the top k scores."""
    if k > logits.shape[1]:
        raise ValueError(f"k: {k} exceeds the number of classes {logits.shape[1]}; use k <= classes")
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """logits [N, C], labels [N] -> mean over classes present in labels of top-1 recall."""
    predictions = logits.argmax(dim=1)
    recalls = [(predictions[labels == c] == c).float().mean() for c in labels.unique()]
    return torch.stack(recalls).mean().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits [N, C], labels [N] -> acc1, acc5 (only with >= 5 classes), mean_per_class_recall."""
    if logits.shape[0] == 0:
        raise ValueError("logits: no samples to score; the dataset is empty")
    metrics = {"acc1": topk_accuracy(logits, labels, 1)}
    if logits.shape[1] >= 5:
        metrics["acc5"] = topk_accuracy(logits, labels, 5)
    metrics["mean_per_class_recall"] = mean_per_class_recall(logits, labels)
    return metrics


def recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """Per-query hits: scores [Q, G], positive_pairs bool [Q, G] -> bool [Q].

    A query hits when its best-scoring positive has fewer than k gallery items ranked above it;
    ties count against the model. k larger than the gallery means every query with a positive hits.
    """
    if scores.shape != positive_pairs.shape:
        raise ValueError(f"positive_pairs: shape {tuple(positive_pairs.shape)} != scores {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    positives = positive_pairs.bool()
    if not positives.any(dim=1).all():
        first = int((~positives.any(dim=1)).nonzero()[0])
        raise ValueError(f"positive_pairs: query {first} has no positive; every query needs one")
    best_positive = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    # Only negatives can push the best positive down; a negative tied with it counts as above.
    above = ((scores >= best_positive) & ~positives).sum(dim=1)
    return above < k


def retrieval_metrics(scores: torch.Tensor, positive_pairs: torch.Tensor,
                      ks: tuple[int, ...] = RECALL_KS, query_batch: int = 4096) -> dict[str, float]:
    """Text-image scores [T, N] and positives bool [T, N] -> CLIP_benchmark-named recalls.

    `image_retrieval_recall@k`: text -> image (queries are captions); `text_retrieval_recall@k`:
    image -> text (queries are images, hit when any of their captions is in the top k). Exactly
    CLIP_benchmark's metric names (its results carry no mean).
    """
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _batched_recall(scores, positive_pairs, k, query_batch)
        metrics[f"text_retrieval_recall@{k}"] = _batched_recall(scores.T, positive_pairs.T, k, query_batch)
    return metrics


def _batched_recall(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int, query_batch: int) -> float:
    # Queries are independent, so chunking bounds memory without changing the result.
    hits = [recall_at_k(scores[i:i + query_batch], positive_pairs[i:i + query_batch], k)
            for i in range(0, scores.shape[0], query_batch)]
    return torch.cat(hits).float().mean().item()
