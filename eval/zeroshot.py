"""Zero-shot classification: class names x templates -> text classifier -> accuracy on images.

python -m clip_pretrain.eval.zeroshot --checkpoint CK [--model NAME] --data D --out R.json \
    [--classnames X] [--templates Y] [--split val] [--batch-size 64] [--workers N] [--device cuda|cpu] \
    [--precision fp32|bf16]
"""
from __future__ import annotations

import torch

from clip_pretrain.eval.encoder import Encoder
from clip_pretrain.eval.features import encode_texts
from clip_pretrain.eval.prompts import fill_template

TASK = "zeroshot_classification"


def build_classifier(encoder: Encoder, classnames: list[str], templates: list[str], *,
                     batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Classifier weights [D, C]: per class, the normalised mean of its normalised template embeddings.

    Same math as open_clip's `build_zero_shot_classifier`; the C x T prompts are encoded in
    batches of `batch_size`, sharded over ranks when several evaluate together.
    """
    prompts = [fill_template(template, name) for name in classnames for template in templates]
    features = encode_texts(encoder, prompts, batch_size=batch_size)  # [C * T, D]
    class_embeddings = features.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(class_embeddings, dim=-1).T


def main(argv: list[str] | None = None) -> None:
    from clip_pretrain.eval.single import single_task_main

    single_task_main(TASK, "clip_pretrain.eval.zeroshot", __doc__, argv, [
        ("--classnames", "imagenet1k|cifar10|cifar100 or a .txt/.json file (default: from the data)"),
        ("--templates", "openai|simple|cifar10|cifar100 or a .txt/.json file (default: the data's, else openai)"),
    ])


if __name__ == "__main__":
    from clip_pretrain.eval.cli import run_cli

    run_cli(main)
