"""Linear probe (and few-shot) transfer from frozen image features; see eval/tasks/linear_probe.py.

python -m clip_pretrain.eval.linear_probe --checkpoint CK --data TEST [--train-data TRAIN | --train-split train | --holdout 0.2] \
    [--fewshot-k K] [--seed 0] [--epochs 100] [--out R.json] [--device cuda|cpu] [--workers N]
Reports lp_acc1, lp_acc5, lp_mean_per_class_recall, the chosen weight_decay, epochs, seed, fewshot_k.
"""
from __future__ import annotations

TASK = "linear_probe"


def main(argv: list[str] | None = None) -> None:
    from clip_pretrain.eval.single import single_task_main

    single_task_main(TASK, "clip_pretrain.eval.linear_probe", __doc__, argv, [
        ("--train-data", "training images (default: the train split of --data)"),
        ("--train-split", "split of --train-data / --data to train on (default train)"),
        ("--holdout", "fraction of --data kept as the test set, the rest trains (stratified, seeded)", float),
        ("--fewshot-k", "train on K images per class (default: all)", int),
        ("--seed", "seed for the holdout, few-shot draw and sweep split (default 0)", int),
        ("--epochs", "L-BFGS iterations over the full training set (default 100)", int),
        ("--classnames", "class names (default: from the data)"),
    ])


if __name__ == "__main__":
    from clip_pretrain.eval.cli import run_cli

    run_cli(main)
