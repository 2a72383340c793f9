"""Zero-shot classification: image features x text classifier -> acc1, acc5, mean per-class recall."""
from __future__ import annotations

from typing import TYPE_CHECKING

from clip_pretrain.eval.datasets import load_classification
from clip_pretrain.eval.metrics import classification_metrics
from clip_pretrain.eval.prompts import load_classnames, load_templates

if TYPE_CHECKING:
    from clip_pretrain.eval.suite import TaskSpec
    from clip_pretrain.eval.tasks.context import TaskContext

OPTIONS = frozenset({"classnames", "templates"})


def check(spec: TaskSpec) -> None:
    for key in OPTIONS:
        value = spec.option(key)
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(f"{key}: must be a name, a file path or a list of strings")


def run(spec: TaskSpec, ctx: TaskContext) -> dict:
    names = load_classnames(spec.option("classnames")) if spec.option("classnames") is not None else None
    dataset = load_classification(spec.data, names, spec.split)
    ctx.note(dataset.split_note)
    # CLIP_benchmark's layout ships its templates; an explicit `templates` wins, else OpenAI's 80.
    templates = load_templates(spec.option("templates") or dataset.templates)
    found = ctx.image_features(dataset, "classification", spec.max_samples)
    found.check_nonempty(dataset.name)
    found.check_labelled(dataset.name)
    classifier = ctx.classifier(dataset.classnames, templates)
    logits = found.features @ classifier  # fp32 cosine similarities [N, C]
    return {"metrics": classification_metrics(logits, found.labels), "num_samples": found.num_images,
            "skipped": found.skipped, "split": dataset.split, "images_per_s": found.images_per_s}
