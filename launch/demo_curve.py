"""Draw the demo's learning curve: training loss and held-out zero-shot top-1 / retrieval R@1 over steps.

    bash launch/demo.sh eval.suite=eval/suites/demo.yaml eval.every_steps=25   # evaluates while training
    python launch/demo_curve.py runs/demo/metrics.jsonl --out docs/demo_curve.png

Reads the trainer's metrics.jsonl only: the loss rows and the `eval/<task>/<metric>` rows that the
training-time evaluation writes at every `eval.every_steps`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ZEROSHOT = "eval/demo-val-zeroshot/acc1"
RETRIEVAL = {"image->text R@1": "eval/demo-val-retrieval/text_retrieval_recall@1",
             "text->image R@1": "eval/demo-val-retrieval/image_retrieval_recall@1"}


def read_curves(metrics: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]], int]:
    """(step, loss) pairs, per evaluation metric (step, value) pairs, and samples per step."""
    losses: list[tuple[int, float]] = []
    batch = 0
    evals: dict[str, list[tuple[int, float]]] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            losses.append((row["step"], row["loss"]))
            batch = row.get("samples_seen", 0) // max(1, row["step"])
        for label, key in {"zero-shot top-1": ZEROSHOT, **RETRIEVAL}.items():
            if key in row:
                evals.setdefault(label, []).append((row["step"], row[key]))
    return losses, evals, batch


def plot(metrics: Path, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses, evals, batch = read_curves(metrics)
    if not losses or not evals:
        raise ValueError(f"{metrics}: needs loss rows and eval rows (train with eval.suite set and eval.every_steps > 0)")
    fig, loss_axis = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    loss_axis.plot(*zip(*losses), color="tab:grey", label="train loss (InfoNCE)")
    loss_axis.set_xlabel(f"step ({batch} samples each)")
    loss_axis.set_ylabel("train loss")
    eval_axis = loss_axis.twinx()
    for (label, points), style in zip(evals.items(), ("o-", "s--", "^:")):
        eval_axis.plot(*zip(*points), style, markersize=3.5, label=f"held-out {label}")
    eval_axis.set_ylim(0, 1)
    eval_axis.set_ylabel("held-out accuracy / recall")
    eval_axis.axhline(1 / 30, color="tab:blue", linewidth=0.6, linestyle=":")  # zero-shot chance
    handles = loss_axis.get_legend_handles_labels()[0] + eval_axis.get_legend_handles_labels()[0]
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=2, fontsize=8, frameon=False)
    loss_axis.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))  # room for the legend below the axes
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python launch/demo_curve.py", description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="a run's metrics.jsonl")
    parser.add_argument("--out", type=Path, default=Path("docs/demo_curve.png"))
    parser.add_argument("--title", default="demo: clip-tiny-rn on coloured shapes, 2 CPU processes")
    args = parser.parse_args(argv)
    try:
        plot(args.metrics, args.out, args.title)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
