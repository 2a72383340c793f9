"""Pure metrics on hand-built score matrices."""
from __future__ import annotations

import pytest
import torch

from clip_pretrain.eval.metrics import classification_metrics, mean_per_class_recall, recall_at_k, retrieval_metrics, topk_accuracy


def test_recall_single_positive_ranks() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5],    # positive 0 ranked 1st
                           [0.9, 0.1, 0.5],    # positive 1 ranked 3rd
                           [0.2, 0.9, 0.5]])   # positive 2 ranked 2nd
    positives = torch.eye(3, dtype=torch.bool)
    assert recall_at_k(scores, positives, 1).tolist() == [True, False, False]
    assert recall_at_k(scores, positives, 2).tolist() == [True, False, True]
    assert recall_at_k(scores, positives, 3).tolist() == [True, True, True]


def test_recall_multi_caption_any_positive_counts() -> None:
    # One image query, five captions in the gallery; captions 3 and 4 belong to it.
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.2]])
    positives = torch.tensor([[False, False, False, True, True]])
    assert recall_at_k(scores, positives, 2).tolist() == [False]
    assert recall_at_k(scores, positives, 3).tolist() == [True]   # best positive (0.7) is 3rd


def test_recall_ties_count_against_the_model() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.1]])
    positives = torch.tensor([[True, False, False], [False, True, False]])
    # Query 0: two negatives tie with the positive -> rank 3; query 1: one tie -> rank 2.
    assert recall_at_k(scores, positives, 2).tolist() == [False, True]
    assert recall_at_k(scores, positives, 3).tolist() == [True, True]
    # Positives tied with each other do not push each other down.
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), torch.tensor([[True, True, False]]), 1).tolist() == [True]


def test_recall_k_larger_than_gallery_hits_everything() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.9, 0.1]])
    positives = torch.tensor([[True, False], [False, True]])
    assert recall_at_k(scores, positives, 10).tolist() == [True, True]
    assert recall_at_k(scores, positives, 1).tolist() == [False, False]


def test_recall_rejects_queries_without_positive_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="query 1 has no positive"):
        recall_at_k(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]), 1)
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(torch.zeros(2, 2), torch.ones(2, 3, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="k: must be >= 1"):
        recall_at_k(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), 0)


def test_retrieval_metrics_both_directions_with_clip_benchmark_names() -> None:
    # 2 images, 4 captions (2 each). Text->image is perfect; for image 1, a caption of image 0
    # (0.6) outranks its own best caption (0.4).
    text_to_image = torch.tensor([0, 0, 1, 1])
    positives = torch.nn.functional.one_hot(text_to_image, 2).bool()
    scores = torch.tensor([[0.9, 0.6], [0.8, 0.2], [0.3, 0.4], [0.3, 0.35]])
    metrics = retrieval_metrics(scores, positives, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 0.5
    assert metrics["text_retrieval_recall@2"] == 1.0
    assert list(metrics) == ["image_retrieval_recall@1", "text_retrieval_recall@1",
                             "image_retrieval_recall@2", "text_retrieval_recall@2"]
    chunked = retrieval_metrics(scores, positives, ks=(1, 2), query_batch=1)
    assert chunked == metrics


def test_topk_and_mean_per_class_recall() -> None:
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 1, 2])
    assert topk_accuracy(logits, labels, 1) == 0.5
    assert topk_accuracy(logits, labels, 2) == 0.75
    # Per class: class 0 1/1, class 1 1/2, class 2 0/1.
    assert mean_per_class_recall(logits, labels) == pytest.approx(0.5)
    metrics = classification_metrics(logits, labels)
    assert "acc5" not in metrics  # fewer than 5 classes
    assert set(classification_metrics(torch.randn(4, 6), labels)) == {"acc1", "acc5", "mean_per_class_recall"}
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
