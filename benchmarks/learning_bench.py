"""Learning benchmark: what our trainer and open_clip_train learn from the same data, scored alike.

    python -m benchmarks.learning_bench [--datasets demo,coco] [--seeds 3] [--first-seed 0] [--samples N]
                                        [--out DIR] [--shared-data ../shared/data] [--threads N] [--keep]
                                        [--trainers ours,peer|none] [--variant NAME:key=value,...]...
                                        [--baseline-json PATH]

For each dataset and seed, both trainers train the same open_clip config (clip-tiny) from scratch on
the same shards with the same sample budget, per-process batch, optimizer (AdamW lr 2e-3, wd 0.1,
betas 0.9/0.98, eps 1e-6, grad clip 1.0, 10% linear warmup then cosine to 0), loss (InfoNCE over
the batch, local_loss off), fp32, one process, one data worker and the same OMP_NUM_THREADS; seed S
is `seed=S` for ours and `--seed S` for theirs. Ours is `pretrain.train` (ZeRO 0, export at the
end); theirs is `open_clip_train.main` through `benchmarks.peer_open_clip` (saving epoch_1.pt, whose
state dict `peer_checkpoint_to_export` turns into model.safetensors + open_clip_config.json). Both
exports are then scored by the same eval suite through `eval.run.run_suite`, in this process.

Datasets (never evaluated on an image trained on):
  demo  `python -m clip_pretrain.data.demo` shards (6000 train / 600 val by default); zero-shot over the 30
        classes and image-text retrieval on the held-out val split (the tasks of eval/suites/demo.yaml
        without its linear probe).
  coco  ../shared/data/coco-mini: a fixed 40 of the 239 photos (lowest sha1 of the file name) are
        held out for image-text retrieval; the other 199, replicated under distinct keys up to the
        budget, are built into shards with data.build; zero-shot on ../shared/data/cifar10-test-2k
        (CIFAR-10 class names, OpenAI's 18 CIFAR templates). Skipped with a note when absent.

Reported per dataset: mean and sample standard deviation over seeds of zero-shot top-1, image->text
R@1 and text->image R@1, ours vs theirs and the difference, in DIR/learning-DATE-cpu.{json,md}
(default DIR: benchmarks/results).

Ablations:
  --variant NAME:key=value,...  one more run of ours per dataset and seed, with these pretrain.train
        overrides after the recipe's (e.g. `--variant cyc:loss.cyclip_cross_weight=0.25`); repeatable.
        Each variant's config is loaded once before any training, so a bad key fails at once.
        Reported as its own rows: mean ± std, minus open_clip_train and minus ours (defaults).
  --trainers ours,peer|none      which baseline trainers to run (default both); variants always run.
  --baseline-json PATH  reuse the ours/peer records of a previous results JSON instead of training
        them; refused unless its recipe (model, batch, lr, ..., samples per dataset, seeds,
        datasets) is this run's and it ran each dataset on the shards this run built (the
        shards_sha256 every results JSON records; older JSONs get a warning). E.g.
        `--datasets coco --seeds 5 --baseline-json benchmarks/results/learning-coco-5seeds-2026-11-29.json
        --variant NAME:...`
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.coco_shards import build_command, read_rows, replicated_table
from benchmarks.train_bench import (
    BETA1, BETA2, EPS, GRAD_CLIP, WEIGHT_DECAY, BenchError, Recipe, launcher, our_overrides, parse_peer_log, peer_args,
    read_our_metrics, run_logged,
)

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "pretrain" / "configs" / "smoke.yaml"
DEFAULT_SHARED = REPO.parent / "shared" / "data"
MODEL, BATCH_SIZE = "clip-tiny", 64
LR, WARMUP_FRACTION = 2e-3, 0.1  # the rest of the optimizer as benchmarks.train_bench sets it
# Default budgets: one pass over the demo's 6000 training samples; coco's 199 photos ~15 times.
DEFAULT_SAMPLES = {"demo": 6016, "coco": 3008}
DEMO_VAL, COCO_HELDOUT = 600, 40
# (record key, metric key in eval's results, table label)
METRICS = (
    ("zeroshot_top1", "acc1", "zero-shot top-1"),
    ("image_to_text_r1", "text_retrieval_recall@1", "image->text R@1"),
    ("text_to_image_r1", "image_retrieval_recall@1", "text->image R@1"),
)
TRAINERS = {"ours": "ours (pretrain.train)", "theirs": "open_clip_train"}
CLI_TRAINERS = {"ours": "ours", "peer": "theirs"}  # --trainers name -> record key (kept for old JSONs)
RESERVED_NAMES = {*TRAINERS, *CLI_TRAINERS, "none", "diff"}


@dataclass(frozen=True)
class Variant:
    """One more ours run: `overrides` go after the recipe's, so they win."""

    name: str
    overrides: tuple[str, ...]


@dataclass
class DatasetSetup:
    """A dataset ready to train on and score: train shard spec, eval suite, what the table says about it."""

    name: str
    shards: str
    suite: Path
    samples: int
    notes: list[str] = field(default_factory=list)
    shards_sha256: str = ""  # shards_fingerprint of the train + eval shards


def shards_fingerprint(folder: Path) -> str:
    """sha256 over every tar member's name and bytes, in file and member order (not the tar headers,
    whose mtimes differ between builds): equal exactly when two runs saw the same samples."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    digest.update(member.name.encode())
                    digest.update(tar.extractfile(member).read())
    return digest.hexdigest()


@dataclass
class RunRecord:
    dataset: str
    seed: int
    trainer: str  # "ours" | "theirs" | a variant's name
    metrics: dict[str, float]
    train_s: float
    eval_s: float
    log: str
    training: dict[str, float] = field(default_factory=dict)  # ours / variants: end-of-training figures


def training_figures(run_dir: Path) -> dict[str, float]:
    """What only the training log knows: the masked-token accuracy of the last logged interval
    when the run trained MLM (the eval suite scores the contrastive towers only)."""
    records = [record for record in read_our_metrics(run_dir) if record.get("mlm", 0) > 0]
    return {"mlm_accuracy": float(records[-1]["mlm_accuracy"])} if records else {}


def say(text: str) -> None:
    print(f"learning_bench: {text}", file=sys.stderr, flush=True)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# --- checkpoint conversion --------------------------------------------------------------------------


def peer_state_dict(checkpoint: dict | object) -> dict[str, torch.Tensor]:
    """open_clip_train's saved checkpoint -> a plain open_clip state dict.

    open_clip_train saves {"epoch", "name", "state_dict", "optimizer"[, "scaler"]}; under DDP every
    key of "state_dict" starts with "module.". logit_scale is a 0-dim parameter and must survive.
    """
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not state_dict:
        raise BenchError("open_clip_train checkpoint has no non-empty 'state_dict'; is it an epoch_N.pt file?")
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    if "logit_scale" not in state_dict:
        raise BenchError("open_clip_train checkpoint has no logit_scale; not a CLIP state dict")
    return {key: value.detach().to(torch.float32).contiguous() for key, value in state_dict.items()}


def peer_checkpoint_to_export(checkpoint_path: Path, model_name: str, out_dir: Path) -> Path:
    """Writes out_dir/model.safetensors + open_clip_config.json (what eval.run loads) from epoch_N.pt.

    The weights are checked against `model_name`'s config (every key, every shape) before writing.
    """
    import open_clip
    from safetensors.torch import save_file

    from clip_pretrain.eval.checkpoints import first_mismatch, register_project_configs

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state_dict = peer_state_dict(checkpoint)
    register_project_configs()
    model = open_clip.create_model(model_name, pretrained=None, load_weights=False, pretrained_text=False)
    mismatch = first_mismatch(model, state_dict)
    if mismatch is not None:
        raise BenchError(f"{checkpoint_path} does not match {model_name}: {mismatch}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(out_dir / "model.safetensors"))
    config = {"model_name": model_name, "model_cfg": open_clip.get_model_config(model_name), "preprocess_cfg": {}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


# --- datasets -----------------------------------------------------------------------------------------


def write_suite(path: Path, tasks: list[dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"tasks": tasks}, sort_keys=False))
    return path


def shard_count_size(samples: int, minimum_shards: int = 8) -> int:
    """Shard size giving at least `minimum_shards` shards (both loaders split shards over workers)."""
    return math.ceil(samples / minimum_shards)


def prepare_demo(work: Path, samples: int) -> DatasetSetup:
    """Demo shards with >= `samples` train samples and DEMO_VAL held-out val samples."""
    out = work / "demo-shards"
    num_train = samples  # one pass: open_clip_train's non-resampled epoch must not run out of samples
    command = [sys.executable, "-m", "clip_pretrain.data.demo", "--output", str(out), "--num-train", str(num_train),
               "--num-val", str(DEMO_VAL), "--shard-size", str(shard_count_size(num_train)), "--no-progress"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"clip_pretrain.data.demo failed: {(result.stdout + result.stderr).strip().splitlines()[-1:]}")
    suite = write_suite(work / "demo-suite.yaml", [
        {"name": "demo-val-zeroshot", "task": "zeroshot_classification", "data": f"{out}::val",
         "templates": str(out / "zeroshot_templates.json")},
        {"name": "demo-val-retrieval", "task": "zeroshot_retrieval", "data": f"{out}::val"},
    ])
    notes = [f"clip_pretrain.data.demo: {num_train} train samples (trained on), {DEMO_VAL} held-out val samples (scored: "
             "zero-shot over 30 classes, retrieval 600 images x 2 captions)"]
    return DatasetSetup("demo", str(out), suite, samples, notes)


def coco_split(rows: list[dict], heldout: int = COCO_HELDOUT) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): the `heldout` rows whose image name has the lowest sha1 are held out,
    so the split is fixed whatever the seed, budget or row order."""
    ranked = sorted(rows, key=lambda row: hashlib.sha1(row["image"].encode()).hexdigest())
    held = {row["image"] for row in ranked[:heldout]}
    return [row for row in rows if row["image"] not in held], [row for row in rows if row["image"] in held]


def prepare_coco(work: Path, samples: int, shared: Path, workers: int) -> DatasetSetup:
    coco, cifar = shared / "coco-mini", shared / "cifar10-test-2k"
    train, heldout = coco_split(read_rows(coco))
    replicas = math.ceil(samples / len(train))
    table = work / "coco-train-table.jsonl"
    replicated_table(coco, table, replicas, rows=train)
    heldout_table = work / "coco-heldout.jsonl"
    heldout_table.write_text("".join(
        json.dumps({"image": str((coco / row["image"]).resolve()), "captions": row["captions"]}) + "\n"
        for row in heldout))
    shards = work / "coco-shards"
    command = build_command(coco, table, shards, max_side=128, workers=workers,
                            shard_size=shard_count_size(replicas * len(train)))
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError("clip_pretrain.data.build of coco-mini shards failed:\n" + "\n".join((result.stdout + result.stderr).splitlines()[-5:]))
    suite = write_suite(work / "coco-suite.yaml", [
        {"name": "cifar10-test-2k-zeroshot", "task": "zeroshot_classification", "data": str(cifar),
         "classnames": "cifar10", "templates": "cifar10"},
        {"name": "coco-mini-heldout-retrieval", "task": "zeroshot_retrieval", "data": str(heldout_table)},
    ])
    notes = [f"coco-mini: {len(train)} photos x {replicas} copies (128 px max side) trained on; "
             f"{len(heldout)} held-out photos x 5 captions scored for retrieval; zero-shot on cifar10-test-2k "
             "(2000 images, 10 classes, 18 templates)"]
    return DatasetSetup("coco", str(shards), suite, samples, notes)


# --- training ---------------------------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
            "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}


def warmup_steps(samples: int) -> int:
    return max(1, round(WARMUP_FRACTION * samples / BATCH_SIZE))


def recipe(samples: int, seed: int) -> Recipe:
    """Both trainers alike: fp32, one process, one data worker, 10% warmup then cosine."""
    return Recipe(MODEL, BATCH_SIZE, samples, "fp32", 1, LR, warmup_steps(samples), seed=seed, log_every=10)


def ours_overrides(recipe_: Recipe, shards: str, run_dir: Path, variant: Variant | None = None) -> list[str]:
    """The recipe's pretrain.train overrides, then the variant's (later ones win)."""
    extra = variant.overrides if variant else ()
    return [*our_overrides(recipe_, shards, run_dir, export=True), "data.shuffle_buffer=1000", *extra]


def train_ours(setup: DatasetSetup, seed: int, work: Path, threads: int,
               variant: Variant | None = None) -> tuple[Path, float, str]:
    """Returns (export dir, seconds, log path)."""
    run_dir = work / f"{setup.name}-seed{seed}-{variant.name if variant else 'ours'}"
    overrides = ours_overrides(recipe(setup.samples, seed), setup.shards, run_dir, variant)
    command = [*launcher(1), "-m", "clip_pretrain.pretrain.train", "--config", str(BASE_CONFIG), *overrides]
    log = work / f"{run_dir.name}.log"
    seconds = run_logged(run_dir.name, command, log, child_env(threads), lambda: 10 * len(read_our_metrics(run_dir)))
    return run_dir / "export", seconds, str(log)


def train_theirs(setup: DatasetSetup, seed: int, work: Path, threads: int) -> tuple[Path, float, str]:
    """Returns (export dir converted from epoch_1.pt, seconds, log path)."""
    name = f"{setup.name}-seed{seed}-theirs"
    args = peer_args(recipe(setup.samples, seed), setup.shards, work / "peer-logs", name, "cpu", save=True)
    argv_file = work / f"{name}-argv.json"  # not on the command line: torchrun would claim `--logs`
    argv_file.write_text(json.dumps(args))
    command = [*launcher(1), "-m", "benchmarks.peer_open_clip", "--argv-json", str(argv_file)]
    log = work / f"{name}.log"
    seconds = run_logged(name, command, log, child_env(threads),
                         lambda: 10 * len(parse_peer_log(log.read_text(errors="replace"))))
    checkpoints = sorted((work / "peer-logs" / name / "checkpoints").glob("epoch_*.pt"),
                         key=lambda path: int(path.stem.split("_")[1]))
    if not checkpoints:
        raise BenchError(f"open_clip_train wrote no epoch_N.pt; see {log}")
    export = peer_checkpoint_to_export(checkpoints[-1], MODEL, work / f"{name}-export")
    return export, seconds, str(log)


# --- scoring ----------------------------------------------------------------------------------------------


def score(export: Path, suite: Path) -> dict[str, float]:
    """The suite's metrics for one export, through eval's own loader and tasks (CPU, in this process)."""
    from clip_pretrain.eval.checkpoints import load_checkpoint
    from clip_pretrain.eval.run import run_suite

    encoder = load_checkpoint(str(export), device="cpu")
    records = run_suite(encoder, suite, device="cpu", batch_size=256, workers=0, model_id=str(export.resolve()),
                        progress=False)
    merged: dict[str, float] = {}
    for record in records:
        merged.update(record["metrics"])
    return {key: float(merged[source]) for key, source, _ in METRICS}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def trainer_order(records: list[RunRecord]) -> list[str]:
    """Trainer keys present: ours, theirs, then the variants in the order they ran."""
    present = dict.fromkeys(record.trainer for record in records)
    return [key for key in TRAINERS if key in present] + [key for key in present if key not in TRAINERS]


def summarize(records: list[RunRecord]) -> dict[str, dict]:
    """{dataset: {metric: {"ours": {mean, std, values}, "theirs": ..., "diff": ours mean - theirs mean,
    VARIANT: {mean, std, values, "vs_theirs": VARIANT mean - theirs mean, "vs_ours": ... - ours mean}}}}

    "diff" needs both ours and theirs; a variant's "vs_*" appear when that baseline is present.
    """
    summary: dict[str, dict] = {}
    for dataset in dict.fromkeys(record.dataset for record in records):
        rows = [record for record in records if record.dataset == dataset]
        per_metric = {}
        for key, _, _ in METRICS:
            entry = {trainer: mean_std([r.metrics[key] for r in rows if r.trainer == trainer])
                     for trainer in trainer_order(rows)}
            if "ours" in entry and "theirs" in entry:
                entry["diff"] = entry["ours"]["mean"] - entry["theirs"]["mean"]
            for variant in [trainer for trainer in trainer_order(rows) if trainer not in TRAINERS]:
                for baseline in TRAINERS:
                    if baseline in entry:
                        entry[variant][f"vs_{baseline}"] = entry[variant]["mean"] - entry[baseline]["mean"]
            per_metric[key] = entry
        summary[dataset] = per_metric
    return summary


def percent(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def points(difference: float | None) -> str:
    return "n/a" if difference is None else f"{round(100 * difference, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def baseline_table(summary: dict[str, dict], setups: dict[str, DatasetSetup]) -> list[str]:
    """ours | open_clip_train | their difference, over whichever of the two ran (or were reused)."""
    columns = [trainer for trainer in TRAINERS if any(trainer in entry for per_metric in summary.values()
                                                      for entry in per_metric.values())]
    if not columns:
        return []
    with_diff = len(columns) == len(TRAINERS)
    header = ["dataset", "samples/run", "metric", *(TRAINERS[c] for c in columns)] + (["ours − theirs (points)"] * with_diff)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for dataset, per_metric in summary.items():
        for key, _, label in METRICS:
            entry = per_metric[key]
            cells = [dataset, str(setups[dataset].samples), label, *(percent(entry[c]) for c in columns)]
            if with_diff:
                cells.append(points(entry["diff"]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def variant_table(summary: dict[str, dict], variants: list[Variant]) -> list[str]:
    """One row set per variant: its mean ± std and its difference to open_clip_train and to ours."""
    if not variants:
        return []
    lines = ["| variant | dataset | metric | mean ± std | − open_clip_train (points) | − ours (points) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for variant in variants:
        for dataset, per_metric in summary.items():
            for key, _, label in METRICS:
                stats = per_metric[key].get(variant.name)
                if stats is not None:
                    lines.append(f"| {variant.name} | {dataset} | {label} | {percent(stats)} | "
                                 f"{points(stats.get('vs_theirs'))} | {points(stats.get('vs_ours'))} |")
    lines.append("")
    return lines + [f"- {variant.name}: ours with `{' '.join(variant.overrides)}`" for variant in variants] + [""]


def markdown(summary: dict[str, dict], setups: dict[str, DatasetSetup], info: dict, seeds: list[int],
             variants: list[Variant] = (), baseline_json: str | None = None) -> str:
    lines = [
        f"Learning benchmark ({info['date']}, {info['device']}, {info['cpu_count']} CPUs, load avg at the end "
        f"{info['load_average_1m']}; torch {info['torch']}, open_clip {info['open_clip']})",
        "",
        f"Both trainers: {MODEL} from scratch, batch {BATCH_SIZE}, fp32, 1 process, AdamW lr {LR:g} wd {WEIGHT_DECAY:g}, "
        f"{WARMUP_FRACTION:.0%} warmup + cosine; seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds, in %.",
        "",
    ]
    if baseline_json:
        lines += [f"ours/open_clip_train records reused from {baseline_json} (not re-trained).", ""]
    lines += baseline_table(summary, setups) + variant_table(summary, list(variants))
    for setup in setups.values():
        lines += [f"- {note}" for note in setup.notes]
    return "\n".join(lines) + "\n"


def mlm_lines(records: list[RunRecord]) -> str:
    """Masked-token accuracy of the trainers that trained MLM, mean over seeds per dataset."""
    lines = []
    for trainer in trainer_order(records):
        by_dataset = {}
        for record in records:
            if record.trainer == trainer and "mlm_accuracy" in record.training:
                by_dataset.setdefault(record.dataset, []).append(record.training["mlm_accuracy"])
        if by_dataset:
            shown = ", ".join(f"{dataset} {percent(mean_std(values))}" for dataset, values in by_dataset.items())
            lines.append(f"- {trainer}: MLM masked-token accuracy at the end of training (%): {shown}")
    return "\n".join(lines) + "\n" if lines else ""


def machine_info() -> dict:
    from importlib.metadata import version

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
    }


# --- command line -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="demo,coco", help="comma list of demo, coco")
    parser.add_argument("--seeds", type=int, default=3, help="N seeds per dataset and trainer: FIRST..FIRST+N-1")
    parser.add_argument("--first-seed", type=int, default=0, metavar="FIRST",
                        help="the first seed (default 0): confirm an option chosen on seeds 0-4 on unseen seeds 5-9")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"training samples per run (default: demo {DEFAULT_SAMPLES['demo']}, coco {DEFAULT_SAMPLES['coco']})")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for learning-DATE-cpu.{json,md}")
    parser.add_argument("--shared-data", default=str(DEFAULT_SHARED), help="holds coco-mini and cifar10-test-2k")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both trainers (default: CPUs)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (shards, logs, exports)")
    parser.add_argument("--trainers", default="ours,peer", help="baseline trainers to run: comma list of ours, peer; or none")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...",
                        help="one more ours run with these pretrain.train overrides (repeatable)")
    parser.add_argument("--baseline-json", default=None, metavar="PATH",
                        help="reuse the --trainers records of this results JSON instead of training them")
    return parser.parse_args(argv)


def parse_trainers(text: str) -> list[str]:
    """--trainers -> record keys ("peer" records are "theirs")."""
    if text.strip() == "none":
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CLI_TRAINERS]
    if not names or unknown or len(set(names)) != len(names):
        raise BenchError(f"--trainers: {text!r}; a comma list of {', '.join(CLI_TRAINERS)} without repeats, or none")
    return [CLI_TRAINERS[name] for name in CLI_TRAINERS if name in names]


def parse_variant(text: str) -> Variant:
    """'NAME:key=value,key=value' -> Variant; NAME a word (it names run dirs and table rows)."""
    name, sep, body = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise BenchError(f"--variant {text!r}: expected NAME:key=value,... with NAME of letters, digits and _")
    if name in RESERVED_NAMES:
        raise BenchError(f"--variant {text!r}: {name!r} is reserved; pick another name")
    overrides = tuple(item.strip() for item in re.split(r",(?![^\[]*\])", body))  # not inside [a,b]
    bad = [item for item in overrides if not item.partition("=")[0].strip() or "=" not in item]
    if not body.strip() or bad:
        raise BenchError(f"--variant {name}: {(bad or [body])[0]!r} is not key=value (e.g. loss.mlm_weight=0.1)")
    return Variant(name, overrides)


def parse_variants(texts: list[str]) -> list[Variant]:
    variants = [parse_variant(text) for text in texts]
    names = [variant.name for variant in variants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BenchError(f"--variant: name {repeated[0]!r} given twice; each variant needs its own name")
    return variants


def check_variant_configs(variants: list[Variant], samples: int) -> None:
    """Loads each variant's full config once, so a bad key or value fails before any training."""
    from clip_pretrain.pretrain.config import load_config

    for variant in variants:
        overrides = ours_overrides(recipe(samples, 0), "unused.tar", Path("unused-run-dir"), variant)
        try:
            load_config(BASE_CONFIG, overrides)
        except ValueError as error:  # ConfigError is a ValueError
            raise BenchError(f"--variant {variant.name}: {error}") from None


def check_args(args: argparse.Namespace) -> list[str]:
    datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in datasets if name not in DEFAULT_SAMPLES]
    if not datasets or unknown:
        raise BenchError(f"--datasets: {args.datasets!r}; choose from {', '.join(DEFAULT_SAMPLES)}")
    if args.seeds < 1:
        raise BenchError(f"--seeds: must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        raise BenchError(f"--first-seed: must be >= 0, got {args.first_seed}")
    if args.samples is not None and args.samples < 2 * BATCH_SIZE:
        raise BenchError(f"--samples: need at least two batches ({2 * BATCH_SIZE}), got {args.samples}")
    return datasets


def budget(args: argparse.Namespace, dataset: str) -> int:
    """Samples per run, a whole number of batches (open_clip_train rounds its epoch to batches)."""
    samples = args.samples or DEFAULT_SAMPLES[dataset]
    return samples // BATCH_SIZE * BATCH_SIZE


def recipe_settings(samples: dict[str, int]) -> dict:
    """What every run of a results JSON shares; a reused baseline must match it."""
    return {"model": MODEL, "batch_size": BATCH_SIZE, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "betas": [BETA1, BETA2], "eps": EPS, "grad_clip": GRAD_CLIP, "warmup_fraction": WARMUP_FRACTION,
            "precision": "fp32", "processes": 1, "data_workers": 1,
            "datasets": {name: {"samples": count} for name, count in samples.items()}}


def recipe_mismatch(payload: dict, samples: dict[str, int], seeds: list[int]) -> str | None:
    """The first field where a results JSON's recipe differs from this run's, as 'FIELD X, this run Y'."""
    mine, theirs = recipe_settings(samples), payload.get("settings", {})
    for key in mine:
        if key != "datasets" and theirs.get(key) != mine[key]:
            return f"{key} {theirs.get(key)!r}, this run {mine[key]!r}"
    datasets = {name: entry.get("samples") for name, entry in theirs.get("datasets", {}).items()}
    if not set(samples) <= set(datasets):  # a subset is fine: ablate demo against a demo+coco baseline
        return f"datasets {','.join(datasets)}, this run {','.join(samples)}"
    for name, count in samples.items():
        if datasets[name] != count:
            return f"{name} samples {datasets[name]}, this run {count}"
    if payload.get("seeds") != seeds:
        return f"seeds {payload.get('seeds')}, this run {seeds}"
    return None


def check_baseline_shards(path: str, setups: dict[str, DatasetSetup]) -> None:
    """Refuses a baseline that trained or scored a dataset on other shards than this run built (the
    recipe check cannot see the data); one from before fingerprints were recorded gets a warning."""
    recorded = json.loads(Path(path).read_text()).get("settings", {}).get("datasets", {})
    for name, setup in setups.items():
        theirs = recorded.get(name, {}).get("shards_sha256")
        if theirs is None:
            say(f"warning: --baseline-json {path} records no shards_sha256 for {name}: cannot check that "
                "its runs used this run's shards")
        elif theirs != setup.shards_sha256:
            raise BenchError(f"--baseline-json: {path} ran {name} on other shards (sha256 {theirs[:12]}, this run "
                             f"{setup.shards_sha256[:12]}); rerun the baseline on these shards")


def load_baseline(path: str, samples: dict[str, int], seeds: list[int], trainers: list[str]) -> list[RunRecord]:
    """The `trainers` records of a previous results JSON, refused unless its recipe is this run's
    and it holds every (dataset, seed, trainer) this run needs."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise BenchError(f"--baseline-json: cannot read {path}: {error}") from None
    mismatch = recipe_mismatch(payload, samples, seeds)
    if mismatch:
        raise BenchError(f"--baseline-json: {path} has {mismatch}; rerun the baseline with this recipe")
    records = [RunRecord(**run) for run in payload.get("runs", [])
               if run.get("trainer") in trainers and run.get("dataset") in samples]
    have = {(record.dataset, record.seed, record.trainer) for record in records}
    for need in [(dataset, seed, trainer) for dataset in samples for seed in seeds for trainer in trainers]:
        if need not in have:
            raise BenchError(f"--baseline-json: {path} has no run for dataset {need[0]} seed {need[1]} {TRAINERS[need[2]]}")
    return records


def prepare(datasets: list[str], args: argparse.Namespace, work: Path, threads: int) -> dict[str, DatasetSetup]:
    setups = {}
    shared = Path(args.shared_data)
    for dataset in datasets:
        samples = budget(args, dataset)
        start = time.perf_counter()
        if dataset == "demo":
            setups[dataset] = prepare_demo(work, samples)
        elif not (shared / "coco-mini" / "captions.jsonl").is_file() or not (shared / "cifar10-test-2k").is_dir():
            say(f"skipping coco: {shared} has no coco-mini/captions.jsonl or cifar10-test-2k")
            continue
        else:
            setups[dataset] = prepare_coco(work, samples, shared, workers=threads)
        setups[dataset].shards_sha256 = shards_fingerprint(Path(setups[dataset].shards))
        say(f"{dataset}: shards ready in {time.perf_counter() - start:.0f} s ({samples} samples per run)")
    return setups


def run_all(setups: dict[str, DatasetSetup], seeds: list[int], work: Path, threads: int, trainers: list[str],
            variants: list[Variant]) -> list[RunRecord]:
    plan = [(setup, seed, trainer) for setup in setups.values() for seed in seeds
            for trainer in [*trainers, *variants]]
    records: list[RunRecord] = []
    start = time.perf_counter()
    for index, (setup, seed, trainer) in enumerate(plan, start=1):
        name = trainer.name if isinstance(trainer, Variant) else trainer
        label = f"[{index}/{len(plan)}] {setup.name} seed {seed} {TRAINERS.get(name, f'variant {name}')}"
        say(f"{label}: training {setup.samples} samples")
        if isinstance(trainer, Variant):
            export, train_s, log = train_ours(setup, seed, work, threads, trainer)
        else:
            export, train_s, log = (train_ours if trainer == "ours" else train_theirs)(setup, seed, work, threads)
        eval_start = time.perf_counter()
        metrics = score(export, setup.suite)
        eval_s = time.perf_counter() - eval_start
        training = training_figures(export.parent) if name != "theirs" else {}  # ours: RUN/export
        records.append(RunRecord(setup.name, seed, name, metrics, train_s, eval_s, log, training))
        elapsed = time.perf_counter() - start
        eta = elapsed / index * (len(plan) - index)
        shown = ", ".join(f"{key} {100 * value:.1f}%" for key, value in metrics.items())
        say(f"{label}: train {train_s:.0f} s, eval {eval_s:.0f} s; {shown}; elapsed {minutes(elapsed)}, ETA {minutes(eta)}")
    return records


@dataclass
class Plan:
    """What to train (`trainers`, `variants`) and what to reuse (`reused`, from --baseline-json)."""

    datasets: list[str]
    seeds: list[int]
    trainers: list[str]
    variants: list[Variant]
    reused: list[RunRecord]


def make_plan(args: argparse.Namespace) -> Plan:
    """Every check that needs no training, so a bad flag fails in seconds."""
    datasets = check_args(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    trainers, variants = parse_trainers(args.trainers), parse_variants(args.variant)
    if not trainers and not variants:
        raise BenchError("--trainers none with no --variant: nothing to run")
    samples = {dataset: budget(args, dataset) for dataset in datasets}
    check_variant_configs(variants, min(samples.values()))
    if args.baseline_json is None:
        return Plan(datasets, seeds, trainers, variants, [])
    if not trainers:
        raise BenchError("--baseline-json: --trainers none reuses nothing from it; name the trainers to reuse")
    return Plan(datasets, seeds, [], variants, load_baseline(args.baseline_json, samples, seeds, trainers))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = make_plan(args)
        threads = args.threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory(prefix="learning-bench-") as tmp:
            work = Path(tempfile.mkdtemp(prefix="learning-bench-keep-")) if args.keep else Path(tmp)
            start = time.perf_counter()
            setups = prepare(plan.datasets, args, work, threads)
            if not setups:
                raise BenchError("no dataset to run")
            if args.baseline_json:
                check_baseline_shards(args.baseline_json, setups)
            records = run_all(setups, plan.seeds, work, threads, plan.trainers, plan.variants)
            reused = [record for record in plan.reused if record.dataset in setups]
            write_results(Path(args.out), setups, reused + records, plan, time.perf_counter() - start, argv,
                          args.baseline_json)
            if args.keep:
                say(f"kept shards, logs and exports in {work}")
    except (BenchError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def write_results(out: Path, setups: dict[str, DatasetSetup], records: list[RunRecord], plan: Plan,
                  total_s: float, argv: list[str] | None, baseline_json: str | None = None) -> None:
    info = machine_info()
    summary = summarize(records)
    table = markdown(summary, setups, info, plan.seeds, plan.variants, baseline_json) + mlm_lines(records)
    command = "python -m benchmarks.learning_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    table += f"\nTotal wall time {minutes(total_s)}. Command: `{command.strip()}`\n"
    settings = recipe_settings({name: setup.samples for name, setup in setups.items()})
    for name, setup in setups.items():
        settings["datasets"][name]["notes"] = setup.notes
        settings["datasets"][name]["shards_sha256"] = setup.shards_sha256
    payload = {
        "machine": info, "command": command.strip(), "total_s": total_s, "seeds": plan.seeds, "settings": settings,
        "variants": {variant.name: list(variant.overrides) for variant in plan.variants},
        "baseline_json": baseline_json, "summary": summary, "runs": [asdict(record) for record in records],
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"learning-{datetime.date.today().isoformat()}-cpu"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    stem.with_suffix(".md").write_text(table)
    print(table)
    say(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    sys.exit(main())
