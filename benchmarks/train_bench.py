"""Training throughput: our trainer vs open_clip_train, and our ZeRO stages 0-3, on the same run.

    python -m benchmarks.train_bench [--shards SPEC] [--model clip-tiny] [--batch-size 64] [--samples 640]
                             [--nproc N] [--precision fp32|bf16] [--workers 1] [--stages 0,1,2,3]
                             [--out results.json] [--skip-peer] [--peak-tflops 989]

Both trainers get the same shards, open_clip model config, per-process batch, precision, sample
budget, optimizer settings (AdamW lr 5e-4, wd 0.1, betas 0.9/0.98, eps 1e-6, grad clip 1.0,
2 warmup steps then cosine) and loss (CLIP InfoNCE over the batch gathered from every rank with
gradients, local_loss off), one data worker per process and the same OMP_NUM_THREADS. Ours runs
`pretrain.train` under torchrun (zero.stage=0 for the head-to-head, no checkpoints or export);
theirs runs `open_clip_train.main` through `benchmarks.peer_open_clip` (model configs registered, a
webdataset end-of-shard fix; see that module).

Throughput rule (both trainers): each optimizer step's samples/s = global batch / step wall time,
data wait included; the first --warmup steps (default 3: allocator growth, worker start-up,
shuffle-buffer fill) are dropped and the median of the rest is reported. "window" samples/s is
samples / summed wall time over those same steps. Process start-up is shown separately.

Without --shards, demo shards with --samples training samples are generated in a temp dir, so
each trainer sees every sample once. On a CUDA machine the defaults switch to ViT-B-32, bf16
(theirs: amp_bf16) and one process per GPU, and model FLOPs utilisation is reported:
FLOPs/sample counted by torch.utils.flop_counter on one forward+backward of the model and loss.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "pretrain" / "configs" / "smoke.yaml"
LR, WEIGHT_DECAY, BETA1, BETA2, EPS, GRAD_CLIP, WARMUP_STEPS = 5e-4, 0.1, 0.9, 0.98, 1e-6, 1.0, 2
PEAK_MEMORY_PREFIX = "bench_peer: peak_memory_mb="  # printed by benchmarks.peer_open_clip
_FLOAT = r"[0-9.]+(?:[eE][+-]?[0-9]+)?"
# open_clip_train/train.py: f"... Batch (t): {avg:.3f}, {samples_per_second:#g}/s, {per_gpu:#g}/s/gpu ..."
PEER_STEP = re.compile(
    rf"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+) \(\d+%\)\] "
    rf"Data \(t\): (?P<data>{_FLOAT}) Batch \(t\): (?P<batch>{_FLOAT}), "
    rf"(?P<sps>{_FLOAT})/s, (?P<sps_gpu>{_FLOAT})/s/gpu"
)


class BenchError(RuntimeError):
    """A bench run that cannot go on; one line naming the cause and the fix."""


@dataclass
class RunResult:
    """One training run's throughput and memory, from its per-step log."""

    name: str
    steps: int  # optimizer steps logged
    timed_steps: int  # steps after warmup that the figures use
    samples_per_s: float  # median over timed steps, global
    samples_per_s_per_process: float
    window_samples_per_s: float  # samples / wall time of the timed steps
    peak_memory_mb: float | None  # rank 0
    process_s: float  # whole subprocess incl. start-up
    log: str


@dataclass
class BenchSettings:
    model: str
    batch_size: int
    samples: int
    nproc: int
    precision: str
    workers: int
    threads: int
    warmup: int
    device: str
    shards: str
    log_every: int = 1  # ours: steps per metrics read (each read synchronises the device)
    decode: str = "cpu"  # ours: data.decode (gpu: JPEGs decoded on the device)


# --- log parsing -----------------------------------------------------------------------------------


def parse_peer_log(text: str) -> list[float]:
    """Global samples/s of each step from open_clip_train's log lines (needs --log-every-n-steps 1)."""
    return [float(match["sps"]) for match in PEER_STEP.finditer(text)]


def parse_peer_peak_memory(text: str) -> float | None:
    values = [float(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith(PEAK_MEMORY_PREFIX)]
    return values[-1] if values else None


def read_our_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(per_step: list[float], global_batch: int, warmup: int) -> tuple[float, float, int]:
    """(median samples/s, window samples/s, timed steps) over the steps after `warmup`."""
    timed = per_step[warmup:]
    if not timed:
        raise BenchError(
            f"only {len(per_step)} steps logged, none after the {warmup} warmup steps; raise --samples or lower --warmup"
        )
    window_s = sum(global_batch / rate for rate in timed)
    return statistics.median(timed), global_batch * len(timed) / window_s, len(timed)


# --- running -----------------------------------------------------------------------------------------


def child_env(settings: BenchSettings) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(settings.threads), "PYTHONUNBUFFERED": "1"}
    if settings.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env


def launcher(nproc: int) -> list[str]:
    """torchrun for both trainers, also at nproc 1, so start-up work is the same."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def run_logged(name: str, command: list[str], log_path: Path, env: dict[str, str], steps_done: Callable[[], int]) -> float:
    """Runs `command` with output to `log_path`, printing a liveness line every 15 s; returns seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"bench:   {name}: {time.perf_counter() - start:.0f} s, {steps_done()} steps", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise BenchError(f"{name} exited {process.returncode}; see {log_path}\n{tail}")
    return elapsed


@dataclass(frozen=True)
class Recipe:
    """What both trainers are given alike (benchmarks.learning_bench uses it too). ``warmup_steps``
    counts optimizer steps of the peer; ours gets the same number of samples."""

    model: str
    batch_size: int  # per process
    samples: int
    precision: str  # ours' name; the peer's amp_bf16 for bf16
    workers: int
    lr: float
    warmup_steps: int
    seed: int = 0
    log_every: int = 1


def our_overrides(recipe: Recipe, shards: str, run_dir: Path, stage: int = 0, export: bool = False) -> list[str]:
    """clip_pretrain.pretrain.train overrides for `recipe`: AdamW and InfoNCE as the peer runs them, no checkpoints."""
    return [
        f"data.train={shards}", f"run_dir={run_dir}", f"seed={recipe.seed}", f"model.name={recipe.model}",
        f"micro_batch={recipe.batch_size}", "grad_accum=1", f"total_samples={recipe.samples}",
        f"precision={recipe.precision}", f"zero.stage={stage}", f"data.workers={recipe.workers}",
        f"optim.lr={recipe.lr}", f"optim.weight_decay={WEIGHT_DECAY}", f"optim.beta1={BETA1}", f"optim.beta2={BETA2}",
        f"optim.eps={EPS}", f"optim.grad_clip={GRAD_CLIP}", "optim.min_lr_ratio=0.0",
        f"optim.warmup_samples={recipe.warmup_steps * recipe.batch_size}",
        "loss.kind=infonce", "loss.local_loss=false", "loss.gather_with_grad=true", "loss.mlm_weight=0.0",
        "checkpoint.every_steps=0", f"checkpoint.export={str(export).lower()}",
        f"logging.every_steps={recipe.log_every}", "logging.progress=false", "logging.wandb_mode=disabled",
        "eval.suite=null",
    ]


def peer_args(recipe: Recipe, shards: str, logs: Path, name: str, device: str, save: bool = False) -> list[str]:
    """open_clip_train.main arguments for `recipe` (save: write epoch_N.pt at the end)."""
    return [
        "--train-data", peer_shards(shards), "--dataset-type", "webdataset",
        "--train-num-samples", str(recipe.samples), "--model", recipe.model,
        "--batch-size", str(recipe.batch_size), "--precision", "amp_bf16" if recipe.precision == "bf16" else recipe.precision,
        "--workers", str(recipe.workers), "--epochs", "1", "--lr", str(recipe.lr), "--wd", str(WEIGHT_DECAY),
        "--beta1", str(BETA1), "--beta2", str(BETA2), "--eps", str(EPS), "--grad-clip-norm", str(GRAD_CLIP),
        "--warmup", str(recipe.warmup_steps), "--lr-scheduler", "cosine", "--gather-with-grad",
        "--seed", str(recipe.seed), "--report-to", "none", "--log-every-n-steps", str(recipe.log_every),
        "--save-frequency", "1" if save else "0", "--zeroshot-frequency", "0", "--val-frequency", "0",
        "--logs", str(logs), "--name", name, "--device", device,
    ]


def run_ours(settings: BenchSettings, stage: int, work: Path) -> RunResult:
    name = f"ours-zero{stage}"
    run_dir = work / name
    recipe = Recipe(settings.model, settings.batch_size, settings.samples, settings.precision, settings.workers,
                    LR, WARMUP_STEPS * settings.nproc, log_every=settings.log_every)
    overrides = [*our_overrides(recipe, settings.shards, run_dir, stage=stage), f"data.decode={settings.decode}"]
    command = [*launcher(settings.nproc), "-m", "clip_pretrain.pretrain.train", "--config", str(BASE_CONFIG), *overrides]
    log_path = work / f"{name}.log"
    process_s = run_logged(name, command, log_path, child_env(settings), lambda: len(read_our_metrics(run_dir)))
    records = read_our_metrics(run_dir)
    # With log_every > 1 each record is the mean over its interval; warmup counts whole intervals.
    per_interval = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    global_batch = settings.batch_size * settings.nproc * settings.log_every
    median, window, timed = summarize(per_interval, global_batch, math.ceil(settings.warmup / settings.log_every))
    peak = max((r["peak_memory_mb"] for r in records if "peak_memory_mb" in r), default=None)
    steps = len(per_interval) * settings.log_every
    return RunResult(name, steps, timed * settings.log_every, median, median / settings.nproc, window, peak, process_s,
                     str(log_path))


def peer_shards(spec: str) -> str:
    """open_clip_train's --train-data: the train tar files of `spec` joined with '::'."""
    from clip_pretrain.data.shards import resolve_spec

    return "::".join(shard.url for shard in resolve_spec(spec, "train"))


def run_theirs(settings: BenchSettings, work: Path) -> RunResult:
    name = "open_clip_train"
    recipe = Recipe(settings.model, settings.batch_size, settings.samples, settings.precision, settings.workers,
                    LR, WARMUP_STEPS, log_every=1)
    args = peer_args(recipe, settings.shards, work / "peer-logs", name, settings.device)
    argv_file = work / "peer-argv.json"  # not on the command line: torchrun would claim `--logs`
    argv_file.write_text(json.dumps(args))
    command = [*launcher(settings.nproc), "-m", "benchmarks.peer_open_clip", "--argv-json", str(argv_file)]
    log_path = work / f"{name}.log"
    process_s = run_logged(
        name, command, log_path, child_env(settings), lambda: len(parse_peer_log(log_path.read_text(errors="replace")))
    )
    text = log_path.read_text(errors="replace")
    per_step = parse_peer_log(text)
    global_batch = settings.batch_size * settings.nproc
    median, window, timed = summarize(per_step, global_batch, settings.warmup)
    return RunResult(
        name, len(per_step), timed, median, median / settings.nproc, window, parse_peer_peak_memory(text), process_s, str(log_path)
    )


# --- FLOPs ---------------------------------------------------------------------------------------------


def flops_per_sample(model_name: str, batch_size: int, device: str, precision: str) -> float:
    """Training FLOPs per sample: one forward+backward of model + CLIP loss, counted by FlopCounterMode.

    Counts matmuls/convolutions/attention (what FlopCounterMode registers), i.e. model FLOPs
    without activation-recompute or elementwise work, the usual MFU numerator.
    """
    import open_clip
    from open_clip.loss import ClipLoss
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.peer_open_clip import MODEL_CONFIG_DIR

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    model = open_clip.create_model(model_name, device=device)
    model.train()
    size = model.visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.randn(batch_size, 3, height, width, device=device)  # [B, 3, H, W]
    context_length = open_clip.get_model_config(model_name)["text_cfg"].get("context_length", 77)
    texts = torch.randint(1, 1000, (batch_size, context_length), device=device)  # [B, L]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=precision == "bf16"):
            image_features, text_features, logit_scale = model(images, texts)[:3]  # SigLIP adds logit_bias
            loss = ClipLoss()(image_features, text_features, logit_scale.exp())
        loss.backward()
    total = counter.get_total_flops()
    del model, images, texts
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return total / batch_size


# --- report ------------------------------------------------------------------------------------------------


def machine_info(settings: BenchSettings) -> dict:
    from importlib.metadata import version  # importing deepspeed here would print accelerator warnings

    if settings.device == "cuda":
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "deepspeed": version("deepspeed"),
        "device": device_name,
        "gpus": torch.cuda.device_count() if settings.device == "cuda" else 0,
    }


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _mem(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def render(settings: BenchSettings, info: dict, ours: RunResult, theirs: RunResult | None,
           stages: list[RunResult], flops: float | None, peak_tflops: float | None) -> str:
    out = [
        f"benchmarks.train_bench  {info['date']}",
        f"machine: {info['device']}, {info['cpu_count']} CPUs, {info['gpus']} GPUs, load avg {info['load_average_1m']}; "
        f"torch {info['torch']}, open_clip {info['open_clip']}, deepspeed {info['deepspeed']}",
        f"run: model {settings.model}, batch {settings.batch_size}/process x {settings.nproc} process(es), "
        f"{settings.samples} samples, precision {settings.precision}, {settings.workers} data worker(s)/process, "
        f"OMP_NUM_THREADS={settings.threads}",
        f"samples/s = median over steps {settings.warmup + 1}..N of global batch / step time (data wait included); "
        "window = samples / summed time of those steps",
        "",
        "head-to-head (ours at ZeRO stage 0)",
    ]
    rows = [_h2h_row(ours, flops, peak_tflops, settings)]
    if theirs is not None:
        rows.append(_h2h_row(theirs, flops, peak_tflops, settings))
    headers = ["trainer", "samples/s", "per process", "window", "timed steps", "peak MB/proc", "process s"]
    if flops is not None:
        headers += ["TFLOP/s/dev", "MFU"]
    out.append(table(headers, rows))
    if theirs is not None:
        out.append(f"ratio ours/theirs: {ours.samples_per_s / theirs.samples_per_s:.2f} "
                   f"(window: {ours.window_samples_per_s / theirs.window_samples_per_s:.2f})")
    if flops is not None:
        out.append(f"model FLOPs/sample (forward+backward): {flops / 1e9:.3f} GFLOP")
    if stages:
        out += ["", "ZeRO stages (ours)"]
        out.append(table(
            ["stage", "samples/s", "per process", "window", "peak MB/proc"],
            [[str(r.name.removeprefix("ours-zero")), f"{r.samples_per_s:.1f}", f"{r.samples_per_s_per_process:.1f}",
              f"{r.window_samples_per_s:.1f}", _mem(r.peak_memory_mb)] for r in stages],
        ))
    return "\n".join(out)


def _h2h_row(result: RunResult, flops: float | None, peak_tflops: float | None, settings: BenchSettings) -> list[str]:
    trainer = "ours (pretrain.train)" if result.name.startswith("ours") else "theirs (open_clip_train)"
    row = [trainer, f"{result.samples_per_s:.1f}", f"{result.samples_per_s_per_process:.1f}",
           f"{result.window_samples_per_s:.1f}", str(result.timed_steps), _mem(result.peak_memory_mb), f"{result.process_s:.0f}"]
    if flops is not None:
        achieved = result.samples_per_s_per_process * flops / 1e12
        row += [f"{achieved:.3f}", f"{100 * achieved / peak_tflops:.1f}%" if peak_tflops else "n/a"]
    return row


# --- command line ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", help="shard spec (dir with manifest.json, brace pattern, .tar); default: generated demo shards")
    parser.add_argument("--model", default="ViT-B-32" if cuda else "clip-tiny")
    parser.add_argument("--batch-size", type=int, default=256 if cuda else 64, help="per process")
    parser.add_argument("--samples", type=int, default=None, help="sample budget per run (default 640 on CPU, 64 steps on GPU)")
    parser.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()) if cuda else 1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16" if cuda else "fp32")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers per process")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both (default: CPUs / (nproc x (1 + workers)), a core per data worker)")
    parser.add_argument("--stages", default="0,1,2,3", help="ZeRO stages for the second table; '' skips it")
    parser.add_argument("--warmup", type=int, default=3, help="leading steps left out of the figures")
    parser.add_argument("--log-every", type=int, default=1,
                        help="ours: steps per metrics read (1 = a device sync per step, as the peer's per-step log)")
    parser.add_argument("--peak-tflops", type=float, default=989.0 if cuda else None,
                        help="device peak for MFU (H100/H200 SXM bf16 dense: 989)")
    parser.add_argument("--decode", choices=["cpu", "gpu"], default="cpu", help="ours: data.decode")
    parser.add_argument("--out", help="write results JSON here")
    parser.add_argument("--skip-peer", action="store_true", help="skip open_clip_train")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, run dirs)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[int]:
    """Validates options; returns the ZeRO stages."""
    for name in ("batch_size", "nproc", "threads", "samples", "log_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BenchError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.workers < 0 or args.warmup < 0:
        raise BenchError("--workers and --warmup: must be >= 0")
    try:
        stages = [int(s) for s in args.stages.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"--stages: {args.stages!r} is not a comma list of ZeRO stages, e.g. 0,1,2,3") from None
    if any(s not in (0, 1, 2, 3) for s in stages):
        raise BenchError(f"--stages: stages must be 0, 1, 2 or 3, got {args.stages}")
    global_batch = args.batch_size * args.nproc
    if args.samples // global_batch < args.warmup + 2:
        raise BenchError(
            f"--samples: {args.samples} gives {args.samples // global_batch} steps of {global_batch}; "
            f"need at least {args.warmup + 2} (warmup + 2): raise --samples to {(args.warmup + 2) * global_batch}"
        )
    if args.shards is None and args.samples % global_batch:
        raise BenchError(f"--samples: {args.samples} is not a multiple of the global batch {global_batch}; round it")
    return stages


def make_demo_shards(root: Path, samples: int, workers: int, nproc: int) -> str:
    """Demo shards holding `samples` training samples (plus margin) in a shard count both loaders split evenly."""
    slots = max(1, workers) * nproc
    count = math.ceil(max(8, slots) / slots) * slots
    shard_size = math.ceil(samples / count)
    out = root / "shards"
    command = [sys.executable, "-m", "clip_pretrain.data.demo", "--output", str(out), "--num-train", str(shard_size * count),
               "--num-val", "16", "--shard-size", str(shard_size), "--no-progress"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"clip_pretrain.data.demo failed ({result.stderr.strip().splitlines()[-1:]}); pass --shards instead")
    return str(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.samples is None:
        args.samples = 64 * args.batch_size * args.nproc if cuda else 640
    try:
        stages = check_args(args)
        return run_bench(args, stages, cuda)
    except (BenchError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_bench(args: argparse.Namespace, stages: list[int], cuda: bool) -> int:
    # Compute threads that compete with the data workers for cores stall each step, for both trainers alike.
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // (args.nproc * (1 + args.workers)))
    with tempfile.TemporaryDirectory(prefix="clip-bench-") as tmp:
        work = Path(tempfile.mkdtemp(prefix="clip-bench-keep-")) if args.keep else Path(tmp)
        say = lambda text: print(f"bench: {text}", file=sys.stderr, flush=True)
        if args.shards is None:
            say(f"generating demo shards with {args.samples} training samples in {work}")
        shards = args.shards or make_demo_shards(work, args.samples, args.workers, args.nproc)
        settings = BenchSettings(args.model, args.batch_size, args.samples, args.nproc, args.precision,
                                 args.workers, threads, args.warmup, "cuda" if cuda else "cpu", shards, args.log_every,
                                 args.decode)
        say(f"ours at ZeRO 0 ({args.samples} samples)")
        ours = run_ours(settings, 0, work)
        say(f"ours: {ours.samples_per_s:.1f} samples/s")
        theirs = None
        if not args.skip_peer:
            say("theirs (open_clip_train)")
            theirs = run_theirs(settings, work)
            say(f"theirs: {theirs.samples_per_s:.1f} samples/s")
        results = {0: ours}
        for stage in (s for s in stages if s not in results):
            say(f"ours at ZeRO {stage}")
            results[stage] = run_ours(settings, stage, work)
        stage_results = [results[s] for s in stages]
        say("counting model FLOPs")
        flops = flops_per_sample(args.model, min(args.batch_size, 8), "cuda" if cuda else "cpu", args.precision)
        info = machine_info(settings)
        print(render(settings, info, ours, theirs, stage_results, flops, args.peak_tflops))
        if args.out:
            payload = {"machine": info, "settings": asdict(settings), "flops_per_sample": flops,
                       "peak_tflops": args.peak_tflops, "ours": asdict(ours),
                       "theirs": asdict(theirs) if theirs else None,
                       "ratio": ours.samples_per_s / theirs.samples_per_s if theirs else None,
                       "zero_stages": {str(s): asdict(results[s]) for s in stages}}
            Path(args.out).write_text(json.dumps(payload, indent=2))
            say(f"wrote {args.out}")
        if args.keep:
            say(f"kept logs and run dirs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
