"""One picture of a run: losses, lr, temperature, throughput, eval metrics and retrieval examples.

    python -m clip_pretrain.pretrain.report RUN_DIR [--out DIR]
    python -m clip_pretrain.pretrain.report RUN_DIR --curve PNG [--title TEXT]   # just the learning curve (README figures)

Reads RUN/metrics.jsonl and the newest RUN/eval/step_*.json (else RUN/results/results.json) and
writes DIR/report.png and DIR/report.html (default DIR: RUN/report). ``--curve`` draws one small
figure instead: training loss and the held-out zero-shot top-1 / retrieval R@1 that training-time
evaluation logged (``eval.every_steps``). Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.gridspec import GridSpec, GridSpecFromSubplotSpec  # noqa: E402

from clip_pretrain.common.cli import prog_name

HEADLINE_EVAL = ("acc1", "lp_acc1", "image_retrieval_recall@1", "text_retrieval_recall@1",
                 "image_retrieval_recall@5", "text_retrieval_recall@5")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CURVE_EVAL = ("acc1", "text_retrieval_recall@1", "image_retrieval_recall@1")  # held-out metrics on the curve


class ReportError(RuntimeError):
    """A run dir the report cannot be drawn from; one line naming the fix."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """RUN/metrics.jsonl as the run's one history: a resume/restart marker at step N drops the
    earlier lines of steps after N (a run killed after its checkpoint logged them once already)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} not found; give a run directory written by pretrain.train")
    records: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "event" in record:
            records = [kept for kept in records if kept["step"] <= record["step"]]
        else:
            records.append(record)
    if not records:
        raise ReportError(f"{path} holds no logged steps yet; train past logging.every_steps first")
    return records


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def last_eval(run_dir: Path) -> list[dict]:
    """The newest evaluation records: training-time RUN/eval/step_*.json, else RUN/results/results.json."""
    steps = sorted((run_dir / "eval").glob("step_*.json"))
    source = steps[-1] if steps else run_dir / "results" / "results.json"
    return json.loads(source.read_text(encoding="utf-8")) if source.is_file() else []


# --- panels -----------------------------------------------------------------------------------------


def plot_lines(ax, records: list[dict], names: tuple[str, ...], title: str, log: bool = False) -> None:
    for index, name in enumerate(names):
        steps, values = series(records, name)
        if steps and any(values):  # the parts dashed: with one part it lies exactly under the total
            ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None, linestyle="--" if index else "-")
    ax.set_title(title)
    ax.set_xlabel("step")
    if log:
        ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_throughput(ax, records: list[dict]) -> None:
    steps, values = series(records, "samples_per_s")
    ax.plot(steps, values, color="tab:blue")
    ax.set_ylabel("samples/s", color="tab:blue")
    ax.set_ylim(bottom=0)
    wait_ax = ax.twinx()
    steps, waits = series(records, "data_wait")
    wait_ax.plot(steps, [100 * w for w in waits], color="tab:red", alpha=0.7)
    wait_ax.set_ylabel("data wait, % of step time", color="tab:red")
    wait_ax.set_ylim(0, max(100 * max(waits, default=0) * 1.2, 5))
    ax.set_title("throughput and data wait")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def plot_eval(ax, records: list[dict]) -> None:
    names = sorted({k for r in records for k in r if k.startswith("eval/") and k.rsplit("/", 1)[-1] in HEADLINE_EVAL})
    for name in names:
        steps, values = series(records, name)
        ax.plot(steps, values, marker="o", label=name[len("eval/"):])
    ax.set_title("evaluation during training")
    ax.set_xlabel("step")
    if names:
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "no evaluation during training\n(set eval.suite and eval.every_steps)",
                ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def plot_summary(ax, run_dir: Path, records: list[dict], evaluation: list[dict]) -> None:
    last = records[-1]
    lines = [f"run: {run_dir.resolve().name}", f"steps: {last['step']}   samples: {last.get('samples_seen', '-')}",
             f"final loss: {last.get('loss', float('nan')):.4g}   temperature: {last.get('temperature', float('nan')):.4g}",
             f"skipped samples: {last.get('skipped_samples', 0)}   non-finite steps: {last.get('nonfinite_steps', 0)}",
             f"peak memory: {last.get('peak_memory_mb', 0):.0f} MB", "", "last evaluation:"]
    for record in evaluation:
        lines.append(f"  {record['dataset']}:")
        lines.extend(f"    {k} = {v:.3f}" for k, v in record["metrics"].items() if k in HEADLINE_EVAL)
    ax.text(0.05, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9, transform=ax.transAxes)
    ax.set_axis_off()


def find_images(data: Any, split: str | None, keys: set[str]) -> dict[str, Any]:
    """Images of `keys` from local shards (any spec data.specs resolves, as eval read them);
    {} for other sources. Decoded like training and eval decode them (data.decode)."""
    from clip_pretrain.data import specs
    from clip_pretrain.data.decode import decode_image

    if not isinstance(data, str) or not keys or not specs.looks_like_spec(data):
        return {}
    try:
        shards = specs.resolve(data, split).shards
    except (ValueError, OSError):  # the data moved since the run: a report without examples
        return {}
    found: dict[str, Any] = {}
    for shard in shards:
        if specs.is_remote(shard.url):
            continue  # a report never downloads
        with tarfile.open(shard.url) as archive:
            for member in archive:
                key, _, suffix = member.name.rpartition(".")
                if key in keys and f".{suffix.lower()}" in IMAGE_SUFFIXES and key not in found:
                    try:
                        found[key] = decode_image(archive.extractfile(member).read())
                    except (OSError, ValueError, SyntaxError):  # a skipped sample in training too
                        continue
        if len(found) == len(keys):
            break
    return found


def plot_examples(fig, spec, evaluation: list[dict], max_queries: int = 4) -> None:
    record = next((r for r in evaluation if r.get("examples")), None)
    if record is None:
        ax = fig.add_subplot(spec)
        ax.text(0.5, 0.5, "no retrieval examples in the last evaluation (add a zeroshot_retrieval task to eval.suite)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    examples = record["examples"][:max_queries]
    top_k = max(len(e["retrieved"]) for e in examples)
    images = find_images(record.get("data"), record.get("split"),
                         {r["key"] for e in examples for r in e["retrieved"]} | {e["target"] for e in examples})
    grid = GridSpecFromSubplotSpec(len(examples), top_k + 2, subplot_spec=spec, wspace=0.08, hspace=0.35,
                                   width_ratios=[2.2, 1] + [1] * top_k)
    for row, example in enumerate(examples):
        label = fig.add_subplot(grid[row, 0])
        label.text(1.0, 0.5, _wrap(example["query"], 34), ha="right", va="center", fontsize=8, transform=label.transAxes)
        label.set_axis_off()
        cells = [("query's image", example["target"], None, "tab:blue")] + [
            (f"#{rank + 1} {hit['score']:.2f}", hit["key"], hit.get("caption"), "tab:green" if hit["hit"] else "tab:red")
            for rank, hit in enumerate(example["retrieved"])]
        for column, (title, key, caption, colour) in enumerate(cells, start=1):
            ax = fig.add_subplot(grid[row, column])
            if key in images:
                ax.imshow(images[key])
            else:
                ax.text(0.5, 0.5, _wrap(caption or key, 18), ha="center", va="center", fontsize=6, transform=ax.transAxes)
            ax.set_title(title, fontsize=7, color=colour)
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_edgecolor(colour)
                side.set_linewidth(2)
    fig.text(0.5, spec.get_position(fig).y1 + 0.012,
             f"text -> image retrieval on {record['dataset']} (green: the caption's own image, red: another image)",
             ha="center", fontsize=10)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])


# --- the report -------------------------------------------------------------------------------------


def render(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Writes OUT/report.png and OUT/report.html; returns the PNG's path."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    records, evaluation = read_metrics(run_dir), last_eval(run_dir)
    fig = plt.figure(figsize=(15, 14))
    grid = GridSpec(3, 3, figure=fig, height_ratios=[1, 1, 1.4], hspace=0.38, wspace=0.3, top=0.95)
    plot_lines(fig.add_subplot(grid[0, 0]), records, ("loss", "contrastive", "mlm", "cyclip_cross", "cyclip_inmodal"),
               "loss and its parts")
    plot_lines(fig.add_subplot(grid[0, 1]), records, ("lr",), "learning rate")
    plot_lines(fig.add_subplot(grid[0, 2]), records, ("temperature", "logit_bias"), "temperature (exp logit_scale)")
    plot_throughput(fig.add_subplot(grid[1, 0]), records)
    plot_eval(fig.add_subplot(grid[1, 1:]), records)
    plot_examples(fig, grid[2, :2], evaluation)
    plot_summary(fig.add_subplot(grid[2, 2]), run_dir, records, evaluation)
    fig.suptitle(f"pretrain report: {run_dir}", fontsize=14, y=0.985)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "report.png"
    fig.savefig(png, dpi=80, bbox_inches="tight")
    plt.close(fig)
    (out_dir / "report.html").write_text(report_html(run_dir, records[-1]), encoding="utf-8")
    return png


def learning_curve(run_dir: str | Path, out: str | Path, title: str | None = None) -> Path:
    """OUT: training loss (left axis) and held-out CURVE_EVAL metrics over steps (right axis)."""
    run_dir, out = Path(run_dir), Path(out)
    records = read_metrics(run_dir)
    names = sorted({k for r in records for k in r if k.startswith("eval/") and k.rsplit("/", 1)[-1] in CURVE_EVAL})
    if not names:
        raise ReportError(f"{run_dir / 'metrics.jsonl'} has no evaluation rows; train with eval.suite set and "
                          "eval.every_steps > 0")
    fig, loss_axis = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    steps, losses = series(records, "loss")
    batch = next((r["samples_seen"] // r["step"] for r in records if r.get("samples_seen") and r.get("step")), None)
    loss_axis.plot(steps, losses, color="tab:grey", label="train loss")
    loss_axis.set_xlabel(f"step ({batch} samples each)" if batch else "step")
    loss_axis.set_ylabel("train loss")
    eval_axis = loss_axis.twinx()
    for name, style in zip(names, ("o-", "s--", "^:", "d-.", "v-", "x--")):
        eval_axis.plot(*series(records, name), style, markersize=3.5, label="held-out " + name[len("eval/"):].replace("/", " "))
    eval_axis.set_ylim(0, 1)
    eval_axis.set_ylabel("held-out accuracy / recall")
    handles = loss_axis.get_legend_handles_labels()[0] + eval_axis.get_legend_handles_labels()[0]
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=2, fontsize=7, frameon=False)
    loss_axis.set_title(title or str(run_dir), fontsize=9)
    fig.tight_layout(rect=(0, 0.16, 1, 1))  # room for the legend below the axes
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def report_html(run_dir: Path, last: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" for k, v in last.items()
                   if isinstance(v, (int, float)) and k != "time")
    title = html.escape(f"pretrain report: {run_dir}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            f"<h1>{title}</h1><img src='report.png' alt='training curves and retrieval examples' style='max-width:100%'>"
            f"<h2>last logged step</h2><table border='1' cellpadding='3'>{rows}</table></body></html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.pretrain.report"), description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    parser.add_argument("--curve", default=None, metavar="PNG", help="draw only the learning curve, into PNG")
    parser.add_argument("--title", default=None, help="the curve's title (default: the run dir)")
    args = parser.parse_args(argv)
    try:
        if args.curve:
            print(f"wrote {learning_curve(args.run_dir, args.curve, args.title)}")
            return 0
        png = render(args.run_dir, args.out)
    except (ReportError, OSError, json.JSONDecodeError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {png} and {png.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
