"""Zero-shot classification: class names x templates -> text classifier -> accuracy on images.

python -m eval.zeroshot --checkpoint CK [--model NAME] --data D --out R.json \
    [--classnames X] [--templates Y] [--split val] [--batch-size 64] [--device cpu] [--precision fp32|bf16]
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from eval.cli import add_checkpoint_args, load_from_args, run_cli, write_json
from eval.datasets import EvalDataset, ImageBatches, load_classification
from eval.encoder import Encoder
from eval.metrics import classification_metrics
from eval.prompts import fill_template, load_classnames, load_templates

TASK = "zeroshot_classification"


def build_classifier(encoder: Encoder, classnames: list[str], templates: list[str], *,
                     batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Classifier weights [D, C]: per class, the normalised mean of its normalised template embeddings.

    Same math as open_clip's `build_zero_shot_classifier`; classes are batched so that each
    text forward holds about `batch_size` prompts.
    """
    classes_per_batch = max(1, batch_size // len(templates))
    columns = []
    starts = range(0, len(classnames), classes_per_batch)
    for start in tqdm(starts, desc="classifier", unit="batch", disable=not progress):
        batch = classnames[start:start + classes_per_batch]
        prompts = [fill_template(template, name) for name in batch for template in templates]
        features = encoder.encode_text(encoder.tokenizer(prompts))  # [len(batch) * T, D]
        class_embeddings = features.reshape(len(batch), len(templates), -1).mean(dim=1)
        columns.append(torch.nn.functional.normalize(class_embeddings, dim=-1).T)
    return torch.cat(columns, dim=1)


def image_logits(encoder: Encoder, batches: ImageBatches, classifier: torch.Tensor,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine logits [N, C] and labels [N] over every readable image."""
    logits, labels = [], []
    classifier = classifier.to(device)
    for images, records in batches:
        features = encoder.encode_image(images.to(device))  # [B, D]
        logits.append((features.to(device) @ classifier).cpu())
        labels.append(torch.tensor([record.label for record in records]))
    if not logits:
        return torch.empty(0, classifier.shape[1]), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate_zeroshot(encoder: Encoder, dataset: EvalDataset, classifier: torch.Tensor, *,
                      batch_size: int = 64, device: str | torch.device = "cpu",
                      max_samples: int | None = None, progress: bool = True) -> dict:
    """Metrics plus sample counts for one labelled dataset and a ready classifier [D, C]."""
    batches = ImageBatches(dataset.records, encoder.preprocess, batch_size,
                           max_samples=max_samples, desc=f"zeroshot {dataset.name}", progress=progress)
    logits, labels = image_logits(encoder, batches, classifier, device)
    batches.check_nonempty(dataset.name)
    return {"metrics": classification_metrics(logits, labels), "num_samples": int(labels.numel()),
            "skipped": batches.skipped}


def zeroshot_record(encoder: Encoder, data: str, *, classnames: str | list[str] | None = None,
                    templates: str | list[str] | None = None, split: str | None = None,
                    batch_size: int = 64, device: str | torch.device = "cpu", model: str = "",
                    pretrained: str = "", max_samples: int | None = None, progress: bool = True) -> dict:
    """One CLIP_benchmark-shaped record for zero-shot classification of `data`."""
    names = load_classnames(classnames) if classnames is not None else None
    dataset = load_classification(data, names, split)
    classifier = build_classifier(encoder, dataset.classnames, load_templates(templates),
                                  batch_size=batch_size, progress=progress)
    result = evaluate_zeroshot(encoder, dataset, classifier, batch_size=batch_size, device=device,
                               max_samples=max_samples, progress=progress)
    return {"dataset": str(data), "model": model, "pretrained": pretrained, "task": TASK, **result}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.zeroshot", description=__doc__.splitlines()[0])
    add_checkpoint_args(parser)
    parser.add_argument("--data", required=True, help="ImageFolder dir, .csv of path,label, or shard spec")
    parser.add_argument("--out", required=True, help="results JSON path")
    parser.add_argument("--classnames", default=None, help="imagenet1k|cifar10|cifar100 or a .txt/.json file")
    parser.add_argument("--templates", default=None, help="openai|simple|cifar10|cifar100 or a .txt/.json file")
    parser.add_argument("--split", default=None, help="split for a shard dir without ::split (train|val)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    encoder = load_from_args(args)
    record = zeroshot_record(encoder, args.data, classnames=args.classnames, templates=args.templates,
                             split=args.split, batch_size=args.batch_size, device=args.device,
                             model=encoder.name, pretrained=args.checkpoint, max_samples=args.max_samples)
    write_json(args.out, record)
    print(f"{record['dataset']}: " + ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items())
          + f" ({record['num_samples']} images, {record['skipped']} skipped) -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
