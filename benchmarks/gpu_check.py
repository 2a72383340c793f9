"""The GPU check: does every precision and ZeRO stage train on CUDA, and how fast are we against
open_clip_train and against a data-free ceiling? One command, about 5 minutes on one H100.

    python -m benchmarks.gpu_check --coco-mini PATH/coco-mini [--out benchmarks/results] [--quick]

Phases (each under its own timeout; a failing phase is recorded and the rest still run):
1. shards: demo shapes (smoke runs), coco-mini photos replicated to ~11.5k samples at 384 px
   ("real", real-JPEG decode cost) and the same at 64 px ("cheap", decode nearly free).
2. smoke: fp32 / bf16 / fp16 x ZeRO 0 / 2 / 3, one process, clip-tiny, finite losses required
   (fp16 at ZeRO >= 1 runs with grad_clip 0: see pretrain/config.py).
3. mlm + eval: bf16 ZeRO-2 with MLM and the demo eval suite during training; then the export is
   scored by `eval.run` on CUDA.
4. bench: benchmarks.train_bench, ViT-B-32 bf16 batch 256, ours (ZeRO 0/2/3) vs open_clip_train on
   the real shards; ours with data.decode=gpu on them; ours on the cheap shards; benchmarks.loader_bench
   on the real shards at full machine (CPU decode, device decode, open_clip's loader);
   benchmarks.ceiling (plain torch loop, random tensors).
Writes gpu-check-DATE-DEVICE.json and .md into --out, and prints the table.

On the project's GPU machines (no registry): install the wheels from ../shared/gpu/fetch_wheels.sh
first, and copy ../shared/data/coco-mini into an ignored folder that travels with the tree.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.coco_shards import build_command, replicated_table

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = "pretrain/configs/smoke.yaml"


def run(name: str, command: list[str], timeout: int, log_dir: Path) -> tuple[bool, str, float]:
    """(ok, output tail, seconds); output goes to log_dir/name.log."""
    start = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("DS_ACCELERATOR", None)
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        output, ok = result.stdout + result.stderr, result.returncode == 0
    except subprocess.TimeoutExpired as error:
        output, ok = f"{error.stdout or ''}{error.stderr or ''}\ntimed out after {timeout} s", False
    (log_dir / f"{name}.log").write_text(output if isinstance(output, str) else output.decode(errors="replace"))
    print(f"gpu_check: {name}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return ok, "\n".join(str(output).splitlines()[-12:]), time.perf_counter() - start


def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def metrics_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def build_shards(coco: Path, work: Path, log_dir: Path, workers: int, replicas: int) -> dict:
    """Demo shards plus coco-mini replicated `replicas` times at 384 px and 64 px."""
    table = work / "coco-replicated.jsonl"
    replicated_table(coco, table, replicas)
    results = {}
    for name, side in (("real", 384), ("cheap", 64)):
        ok, tail, seconds = run(f"shards-{name}", build_command(coco, table, work / name, side, workers), 600, log_dir)
        manifest = work / name / "manifest.json"
        kept = sum(s.get("count", 0) for s in json.loads(manifest.read_text()).get("shards", [])) if manifest.is_file() else 0
        results[name] = {"ok": ok and kept > 0, "seconds": round(seconds, 1), "samples": kept, "tail": tail}
    ok, tail, seconds = run("shards-demo", py("-m", "clip_pretrain.data.demo", "--output", str(work / "demo"), "--num-train", "1024",
                                              "--num-val", "128", "--shard-size", "64", "--no-progress"), 300, log_dir)
    results["demo"] = {"ok": ok, "seconds": round(seconds, 1), "tail": None if ok else tail}
    return results


def smoke(work: Path, log_dir: Path) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        for stage in (0, 2, 3):
            name = f"smoke-{precision}-zero{stage}"
            run_dir = work / name
            extra = ["optim.grad_clip=0"] if precision == "fp16" and stage >= 1 else []
            ok, tail, seconds = run(name, py("-m", "clip_pretrain.pretrain.train", "--config", SMOKE_CONFIG, f"data.train={work / 'demo'}",
                                             f"run_dir={run_dir}", f"precision={precision}", f"zero.stage={stage}",
                                             "micro_batch=32", "total_samples=640", "checkpoint.every_steps=0", *extra),
                                    300, log_dir)
            losses = [m["loss"] for m in metrics_of(run_dir) if "loss" in m]
            finite = bool(losses) and all(math.isfinite(v) for v in losses)
            rows.append({"name": name, "ok": ok and finite, "seconds": round(seconds, 1), "first_loss": losses[0] if losses else None,
                         "last_loss": losses[-1] if losses else None, "tail": None if ok else tail})
    return rows


def mlm_and_eval(work: Path, log_dir: Path) -> list[dict]:
    run_dir = work / "mlm-eval"
    suite = work / "demo-suite.yaml"
    suite.write_text((REPO / "eval" / "suites" / "demo.yaml").read_text().replace("demo_out/shards", str(work / "demo")))
    rows = []
    ok, tail, seconds = run("train-mlm-eval", py("-m", "clip_pretrain.pretrain.train", "--config", SMOKE_CONFIG, f"data.train={work / 'demo'}",
                                                 f"run_dir={run_dir}", "precision=bf16", "zero.stage=2", "loss.mlm_weight=0.2",
                                                 "micro_batch=32", "total_samples=1280", f"eval.suite={suite}",
                                                 "eval.every_steps=20", "checkpoint.every_steps=0"), 400, log_dir)
    evals = [m for m in metrics_of(run_dir) if any(k.startswith("eval/") for k in m)]
    rows.append({"name": "train bf16 zero2 + MLM + eval in training", "ok": ok and bool(evals), "seconds": round(seconds, 1),
                 "eval": evals[-1] if evals else None, "tail": None if ok else tail})
    ok, tail, seconds = run("eval-cli", py("-m", "clip_pretrain.eval.run", "--checkpoint", str(run_dir / "export"), "--suite", str(suite),
                                           "--precision", "bf16", "--out", str(work / "eval-cli")), 300, log_dir)
    rows.append({"name": "clip_pretrain.eval.run on the export", "ok": ok, "seconds": round(seconds, 1), "tail": tail})
    return rows


def bench(work: Path, log_dir: Path, args: argparse.Namespace) -> dict:
    out: dict = {}
    batch = args.bench_batch
    samples = batch * (20 if args.quick else 40)
    common = ["--model", args.bench_model, "--batch-size", str(batch), "--precision", "bf16", "--workers", str(args.workers),
              "--samples", str(samples), "--log-every", "5", "--warmup", "5"]
    for name, extra in (("real", ["--shards", str(work / "real"), "--stages", "0" if args.quick else "0,2,3"]),
                        ("real-gpu-decode", ["--shards", str(work / "real"), "--stages", "0", "--skip-peer", "--decode", "gpu"]),
                        ("cheap", ["--shards", str(work / "cheap"), "--stages", "0", "--skip-peer"])):
        result_file = work / f"bench-{name}.json"
        ok, tail, seconds = run(f"bench-{name}", py("-m", "benchmarks.train_bench", *common, *extra, "--out", str(result_file)),
                                600, log_dir)
        out[name] = {"ok": ok, "seconds": round(seconds, 1), "tail": None if ok else tail,
                     "result": json.loads(result_file.read_text()) if ok and result_file.is_file() else None}
    loader_file = work / "loader-bench.json"
    ok, tail, seconds = run("loader-bench", py("-m", "benchmarks.loader_bench", "--shards", str(work / "real"),
                                               "--model", args.bench_model, "--batch-size", str(batch), "--batches",
                                               "8" if args.quick else "24", "--workers", str(args.workers),
                                               "--decode", "cpu,gpu", "--out", str(loader_file)), 600, log_dir)
    out["loader"] = {"ok": ok, "seconds": round(seconds, 1), "tail": None if ok else tail,
                     "result": json.loads(loader_file.read_text()) if ok and loader_file.is_file() else None}
    ok, tail, seconds = run("ceiling", py("-m", "benchmarks.ceiling", "--model", args.bench_model, "--batch-size", str(batch),
                                          "--precision", "bf16"), 300, log_dir)
    match = re.search(r"\{.*\"samples_per_s\".*\}", tail)
    out["ceiling"] = {"ok": ok and bool(match), "seconds": round(seconds, 1), "result": json.loads(match.group()) if match else None,
                      "tail": None if ok else tail}
    return out


def summary(report: dict) -> list[str]:
    """Markdown lines: the ratios the GPU-step issue sets targets for."""
    lines = []
    real = (report.get("bench", {}).get("real") or {}).get("result") or {}
    cheap = (report.get("bench", {}).get("cheap") or {}).get("result") or {}
    ceiling = (report.get("bench", {}).get("ceiling") or {}).get("result") or {}
    ours = (real.get("ours") or {}).get("samples_per_s")
    theirs = (real.get("theirs") or {}).get("samples_per_s")
    gpu_decode = (report.get("bench", {}).get("real-gpu-decode") or {}).get("result") or {}
    rows = [("ours ZeRO-0, real-JPEG shards", ours), ("open_clip_train, real-JPEG shards", theirs),
            ("ours ZeRO-0, real-JPEG shards, data.decode=gpu", (gpu_decode.get("ours") or {}).get("samples_per_s")),
            ("ours ZeRO-0, cheap-decode shards", (cheap.get("ours") or {}).get("samples_per_s")),
            ("data-free ceiling (plain torch loop)", ceiling.get("samples_per_s"))]
    for stage, result in (real.get("zero_stages") or {}).items():
        rows.append((f"ours ZeRO-{stage}, real-JPEG shards (peak {result.get('peak_memory_mb') or 0:.0f} MB)", result["samples_per_s"]))
    settings = real.get("settings") or {}
    lines += [f"| run ({settings.get('model', '?')}, bf16, batch {settings.get('batch_size', '?')}) | samples/s |", "| --- | --- |"]
    lines += [f"| {name} | {value:.0f} |" if value else f"| {name} | n/a |" for name, value in rows]
    ratios = []
    if ours and theirs:
        ratios.append(f"ours / open_clip_train: {ours / theirs:.2f} (target >= 1.3)")
    cheap_ours = (cheap.get("ours") or {}).get("samples_per_s")
    if cheap_ours and ceiling.get("samples_per_s"):
        ratios.append(f"ours (cheap decode) / ceiling: {cheap_ours / ceiling['samples_per_s']:.2f} (target >= 0.9)")
    loader_rows = ((report.get("bench", {}).get("loader") or {}).get("result") or {}).get("rows") or []
    if loader_rows:
        lines += ["", "| loader (real-JPEG shards) | workers | img/s | img/s/worker | / open_clip |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['loader']} | {r['workers']} | {r['images_per_s']:.0f} | {r['per_worker']:.0f} | {r['vs_open_clip']:.2f} |"
                  for r in loader_rows]
        device_rows = [r for r in loader_rows if "device decode" in r["loader"]]
        if device_rows:
            ratios.append(f"loader, data.decode=gpu / open_clip: {device_rows[-1]['vs_open_clip']:.2f} (target >= 2)")
    stages = real.get("zero_stages") or {}
    for stage, target in (("2", 0.95), ("3", 0.8)):
        if stage in stages and "0" in stages:
            ratios.append(f"ZeRO-{stage} / ZeRO-0: {stages[stage]['samples_per_s'] / stages['0']['samples_per_s']:.2f} (target >= {target})")
    return lines + [""] + [f"- {r}" for r in ratios]


def render(report: dict) -> str:
    out = [f"# GPU check, {report['date']}, {report['device']}", "", f"Command: `{report['command']}`", ""]
    checks = [*report.get("smoke", []), *report.get("mlm_eval", [])]
    out += ["| check | result | s |", "| --- | --- | --- |"]
    out += [f"| {c['name']} | {'ok' if c['ok'] else 'FAILED'} | {c['seconds']} |" for c in checks]
    out += ["", *summary(report), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--coco-mini", required=True, type=Path, help="folder with captions.jsonl and images/ (../shared/data/coco-mini)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 2), help="data workers")
    parser.add_argument("--replicas", type=int, default=48, help="copies of coco-mini in the benchmark shards")
    parser.add_argument("--quick", action="store_true", help="shorter benchmark, ZeRO-0 only")
    parser.add_argument("--bench-model", default="ViT-B-32", help="(a CPU dry run of the script uses clip-tiny)")
    parser.add_argument("--bench-batch", type=int, default=256)
    parser.add_argument("--skip", default="", help="comma list of phases to skip: smoke,mlm_eval,bench")
    args = parser.parse_args(argv)
    if not (args.coco_mini / "captions.jsonl").is_file():
        print(f"error: --coco-mini {args.coco_mini} has no captions.jsonl; point it at a copy of ../shared/data/coco-mini", file=sys.stderr)
        return 2
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print("gpu_check: no CUDA device; running on CPU (a dry run of the script, not GPU figures)", file=sys.stderr)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    report: dict = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "device": device,
                    "torch": torch.__version__, "command": " ".join(["python -m benchmarks.gpu_check", *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        log_dir = args.out / "gpu-check-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        report["shards"] = build_shards(args.coco_mini, work, log_dir, args.workers, args.replicas)
        if "smoke" not in skip:
            report["smoke"] = smoke(work, log_dir)
        if "mlm_eval" not in skip:
            report["mlm_eval"] = mlm_and_eval(work, log_dir)
        if "bench" not in skip:
            report["bench"] = bench(work, log_dir, args)
    stem = f"gpu-check-{report['date'][:10]}-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    failed = [c["name"] for c in [*report.get("smoke", []), *report.get("mlm_eval", [])] if not c["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
