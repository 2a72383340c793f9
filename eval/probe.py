"""Linear probe on frozen features: multinomial logistic regression with torch's L-BFGS.

Pure tensors in, metrics out (no models, no I/O). The weight decay is chosen on a held-out part of
the training features (stratified, seeded), then the probe is refit on all of them with that value
and scored on the test features, as in CLIP's linear-probe protocol (which used sklearn's L-BFGS
logistic regression with a C sweep; here weight_decay ~ 1 / (C * N)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clip_pretrain.eval.metrics import classification_metrics

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # on standardised features
DEFAULT_WEIGHT_DECAY = 1e-3  # used when the training set is too small to hold any part out
HOLDOUT_FRACTION = 0.2
MAX_ITER = 100


@dataclass
class ProbeConfig:
    seed: int = 0
    fewshot_k: int = -1  # images per class from the train split; -1: all (CLIP_benchmark's convention)
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    max_iter: int = MAX_ITER  # L-BFGS iterations, each a full pass over the features ("epochs")

    def __post_init__(self) -> None:
        if self.fewshot_k != -1 and self.fewshot_k < 1:
            raise ValueError(f"fewshot_k: must be -1 (all) or >= 1, got {self.fewshot_k}")
        if not self.weight_decays or any(wd < 0 for wd in self.weight_decays):
            raise ValueError(f"weight_decays: need one or more values >= 0, got {list(self.weight_decays)}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter: must be >= 1, got {self.max_iter}")


def per_class_rows(labels: torch.Tensor, generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Row indices of each class, in a seeded random order (CPU indices, whatever labels' device)."""
    labels = labels.cpu()
    return {int(c): (labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=generator)]
            for c in labels.unique()}


def fewshot_rows(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k seeded rows per class; one line naming the class when it has fewer."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label, members in per_class_rows(labels, generator).items():
        if members.numel() < k:
            raise ValueError(f"fewshot_k: class {label} has only {members.numel()} training images, fewer than "
                             f"{k}; lower fewshot_k")
        rows.append(members[:k])
    return torch.cat(rows).sort().values


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (fit rows, held-out rows): floor(fraction * n_c) of each class held out."""
    generator = torch.Generator().manual_seed(seed + 1)
    fit, held = [], []
    for members in per_class_rows(labels, generator).values():
        cut = int(members.numel() * fraction)
        held.append(members[:cut])
        fit.append(members[cut:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = MAX_ITER) -> torch.nn.Linear:
    """features [N, D], labels [N] -> Linear(D, C) on the raw features, minimising mean cross-entropy
    + wd/2 * |W|^2 over features standardised with their own mean and std.

    Standardising first matters: a weakly trained tower can put every image within ~1e-3 of one
    direction, where L-BFGS on the raw features stops at once (gradients below tolerance).
    """
    mean = features.mean(dim=0)
    std = features.std(dim=0).nan_to_num(1.0).clamp_min(1e-12)  # one row has no spread: leave it unscaled
    probe = _fit_standardised((features - mean) / std, labels, num_classes, weight_decay, max_iter)
    with torch.no_grad():  # fold the standardisation in: W' = W / std, b' = b - W' . mean
        probe.weight /= std
        probe.bias -= probe.weight @ mean
    return probe


def _fit_standardised(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                      max_iter: int) -> torch.nn.Linear:
    probe = torch.nn.Linear(features.shape[1], num_classes, device=features.device)
    torch.nn.init.zeros_(probe.weight)  # zero init: the result depends on the data only
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.eval()


def predict(probe: torch.nn.Linear, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return probe(features).float().cpu()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int,
                 config: ProbeConfig | None = None) -> tuple[dict[str, float], dict[float, float]]:
    """(metrics, sweep): lp_acc1, lp_acc5, lp_mean_per_class_recall on the test rows plus weight_decay,
    epochs, seed, fewshot_k; and the held-out top-1 of every weight decay tried."""
    config = config or ProbeConfig()
    if config.fewshot_k != -1:
        rows = fewshot_rows(train_labels, config.fewshot_k, config.seed)
        train_features, train_labels = train_features[rows], train_labels[rows]
    weight_decay, sweep = choose_weight_decay(train_features, train_labels, num_classes, config)
    probe = fit_logistic(train_features.float(), train_labels, num_classes, weight_decay, config.max_iter)
    metrics = classification_metrics(predict(probe, test_features.float().to(train_features.device)),
                                      test_labels.cpu())
    result = {f"lp_{name}": value for name, value in metrics.items()}
    result.update(weight_decay=weight_decay, epochs=config.max_iter, seed=config.seed, fewshot_k=config.fewshot_k)
    return result, sweep


def choose_weight_decay(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        config: ProbeConfig) -> tuple[float, dict[float, float]]:
    """The decay with the best held-out top-1 (ties: the larger, i.e. simpler, probe) and every score."""
    fit, held = holdout_split(labels, HOLDOUT_FRACTION, config.seed)
    if held.numel() == 0 or len(config.weight_decays) == 1:
        return (config.weight_decays[0] if len(config.weight_decays) == 1 else DEFAULT_WEIGHT_DECAY), {}
    sweep = {}
    for weight_decay in config.weight_decays:
        probe = fit_logistic(features[fit].float(), labels[fit], num_classes, weight_decay, config.max_iter)
        predictions = predict(probe, features[held].float()).argmax(dim=1)
        sweep[weight_decay] = (predictions == labels[held].cpu()).float().mean().item()
    best = max(sweep.values())
    return max(wd for wd, acc in sweep.items() if acc == best), sweep
