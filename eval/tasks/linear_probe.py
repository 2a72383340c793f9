"""Linear probe on frozen image features: logistic regression fit on train images, scored on test.

Training images come from `train_data` (+ `train_split`), from the `train` split of `data` when it
has splits, or from `holdout`: a stratified, seeded fraction of `data` kept for the test and the
rest used for training (e.g. cifar10-test-2k with holdout 0.2: 1600 train / 400 test).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clip_pretrain.eval.datasets import EvalDataset, load_classification
from clip_pretrain.eval.probe import ProbeConfig, holdout_split, linear_probe
from clip_pretrain.eval.prompts import load_classnames

if TYPE_CHECKING:
    from clip_pretrain.eval.suite import TaskSpec
    from clip_pretrain.eval.tasks.context import TaskContext

OPTIONS = frozenset({"classnames", "train_data", "train_split", "holdout", "fewshot_k", "seed", "weight_decays",
                     "epochs"})


def check(spec: TaskSpec) -> None:
    holdout = spec.option("holdout")
    if holdout is not None and not (isinstance(holdout, float) and 0 < holdout < 1):
        raise ValueError(f"holdout: {holdout!r} must be a fraction strictly between 0 and 1, e.g. 0.2")
    if holdout is not None and (spec.option("train_data") or spec.option("train_split")):
        raise ValueError("holdout: splits `data` itself; drop train_data/train_split or holdout")
    for key in ("fewshot_k", "seed", "epochs"):
        if spec.option(key) is not None and not isinstance(spec.option(key), int):
            raise ValueError(f"{key}: must be an integer, got {spec.option(key)!r}")
    probe_config(spec)  # range checks with their one-line errors


def probe_config(spec: TaskSpec) -> ProbeConfig:
    kwargs = {"seed": spec.option("seed", 0), "fewshot_k": spec.option("fewshot_k", -1)}
    if spec.option("weight_decays") is not None:
        kwargs["weight_decays"] = tuple(float(value) for value in spec.option("weight_decays"))
    if spec.option("epochs") is not None:
        kwargs["max_iter"] = spec.option("epochs")
    return ProbeConfig(**kwargs)


def datasets(spec: TaskSpec, names: list[str] | None) -> tuple[EvalDataset, EvalDataset | None]:
    """(test dataset, train dataset or None when the test set is split by holdout)."""
    test = load_classification(spec.data, names, spec.split)
    if spec.option("holdout") is not None:
        return test, None
    train_data = spec.option("train_data") or spec.data
    train_split = spec.option("train_split") or ("train" if test.split is not None else None)
    if train_data == spec.data and train_split in (None, test.split):
        raise ValueError(f"train_data: {spec.data} has no separate training images; give train_data, "
                         f"train_split, or holdout: 0.2 to split it")
    return test, load_classification(train_data, test.classnames, train_split)


def run(spec: TaskSpec, ctx: TaskContext) -> dict:
    config = probe_config(spec)
    names = load_classnames(spec.option("classnames")) if spec.option("classnames") is not None else None
    test_set, train_set = datasets(spec, names)
    ctx.note(test_set.split_note)
    test = ctx.image_features(test_set, "classification", spec.max_samples)
    test.check_nonempty(test_set.name)
    test.check_labelled(test_set.name)
    skipped = test.skipped
    if train_set is None:
        train_rows, test_rows = holdout_split(test.labels, spec.option("holdout"), config.seed)
        train, test = test.subset(train_rows), test.subset(test_rows)
    else:
        train = ctx.image_features(train_set, "classification", None)
        train.check_nonempty(train_set.name)
        train.check_labelled(train_set.name)
        skipped += train.skipped
    device = torch.device(ctx.device)
    metrics, sweep = linear_probe(train.features.to(device), train.labels.to(device), test.features.to(device),
                                  test.labels, len(test_set.classnames), config)
    return {"metrics": metrics, "num_samples": test.num_images, "num_train": train.num_images,
            "skipped": skipped, "split": test_set.split,
            "weight_decay_sweep": {f"{wd:g}": acc for wd, acc in sweep.items()}}
