"""Contrastive (+ optional MLM) pretraining under DeepSpeed ZeRO.

    python -m clip_pretrain.pretrain.train --config pretrain/configs/demo.yaml [--resume auto] [key=value ...]

Run it under torchrun, srun or as one plain process. Gradient accumulation is DeepSpeed's: each
micro-batch's contrastive loss takes its negatives from that micro-batch across all ranks, unless
loss.accum_features=true, where they span the whole accumulated batch (open_clip's --accum-freq
feature cache, pretrain/accum.py).
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from clip_pretrain.common.cli import prog_name
from clip_pretrain.common import checkpoint_files as ckpt
from clip_pretrain.data.device import DeviceBatches
from clip_pretrain.pretrain.checkpoint import Checkpointer
from clip_pretrain.pretrain.config import ConfigError, TrainConfig, config_reference, dump_config, load_config
from clip_pretrain.pretrain.distributed import DistContext, any_true, gather_objects, init_distributed, shutdown
from clip_pretrain.pretrain.ema import WeightEma, ema_weights
from clip_pretrain.pretrain.setup import build_everything, open_clip_config_json, prepare_run_dir
from clip_pretrain.pretrain.state import TrainState, rng_state, seed_everything, set_rng_state
from clip_pretrain.pretrain.step import StepMetrics, train_step
from clip_pretrain.pretrain.tracking import Tracker


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is one line naming the cause and the fix."""


# --- the loop ----------------------------------------------------------------------------------


Evaluator = Callable[[Any, Any, TrainConfig, DistContext, int], dict[str, float]]


def train(cfg: TrainConfig, dist: DistContext, evaluate: Evaluator | None = None) -> dict[str, Any]:
    """Trains until the sample budget is spent or a preemption signal arrives; returns the last metrics.

    `evaluate(engine, parts, cfg, dist, step)` runs `cfg.eval.suite` (the CLI passes
    eval.training.evaluate_engine: this package does not import eval/)."""
    if cfg.eval.suite and evaluate is None:
        raise ConfigError("config key eval.suite: set, but this trainer was built without an evaluator; "
                          "run python -m clip_pretrain.pretrain.train, or pass evaluate=eval.training.evaluate_engine")
    run_dir = prepare_run_dir(cfg, dist)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    parts = build_everything(cfg, dist)
    seed_everything(cfg.seed + dist.rank)  # dropout / patch-dropout masks differ across ranks
    engine, checkpointer = parts.engine, parts.checkpointer
    state = TrainState()
    ema = WeightEma(engine.module, cfg.ema) if cfg.ema.enabled else None  # from the initial weights
    resume_from = resolve_resume(cfg, checkpointer)
    if resume_from is not None:
        restore(engine, parts.loader, state, checkpointer, resume_from, cfg, dist, ema=ema)
    batches = DeviceBatches(parts.loader, dist.device, parts.normalize, parts.decode)  # resumes where the loader stands
    total_steps = cfg.total_steps(dist.world_size)
    tracker = Tracker(run_dir, cfg, dist.is_main, total_steps, state.step, resume_from)
    tracker.message(describe_run(cfg, dist, total_steps, resume_from))
    interval, metrics = StepMetrics(dist.device), {}
    with preemption_signals() as preempted:
        while state.step < total_steps:
            rank_samples = train_step(engine, parts.optimizer, batches, cfg, dist.rank, dist.world_size, interval)
            state.samples_seen += rank_samples * dist.world_size
            state.step = engine.global_steps
            if ema is not None:
                ema.update(engine.module, state.step)
            save_due = (bool(cfg.checkpoint.every_steps) and state.step % cfg.checkpoint.every_steps == 0
                        and state.step < total_steps)  # the final save follows the loop
            # No host read between logging intervals: the host runs ahead of the device.
            if save_due or state.step % cfg.logging.every_steps == 0 or state.step == total_steps:
                metrics = read_interval(interval, engine, parts.loader, cfg, dist, state)
                tracker.log(state.step, metrics)
                tracker.progress(state.step, metrics)
                stop = any_true(preempted(), dist.device)
                if stop or save_due:
                    save(engine, batches, state, checkpointer, cfg, dist, ema=ema)
                if stop:
                    tracker.message(f"preemption signal: saved step {state.step} to {checkpointer.latest()}; exiting")
                    tracker.close()
                    return metrics
            if cfg.eval.suite and cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0:
                with ema_weights(ema, engine.module):  # with EMA on, its weights are the ones scored
                    tracker.log(state.step, evaluate(engine, parts, cfg, dist, state.step))
    final = save(engine, batches, state, checkpointer, cfg, dist, ema=ema)
    if cfg.checkpoint.export and dist.is_main:
        tracker.message(export_final(final, run_dir, ema is not None))
    if cfg.eval.suite:
        with ema_weights(ema, engine.module):
            metrics.update(evaluate(engine, parts, cfg, dist, state.step))
        tracker.log(state.step, metrics)
    tracker.close()
    return metrics


def export_final(checkpoint_dir: Path, run_dir: Path, with_ema: bool) -> str:
    """RUN/export: the EMA weights when EMA is on (what evaluation scored), else the trained ones;
    with EMA, RUN/export-raw holds the trained (raw) weights. Returns a line for the log."""
    exported = ckpt.export(checkpoint_dir, run_dir / "export", ema=with_ema)
    if not with_ema:
        return f"exported open_clip weights to {exported}"
    raw = ckpt.export(checkpoint_dir, run_dir / "export-raw")
    return f"exported open_clip EMA weights to {exported}, the raw weights to {raw}"


def read_interval(interval: StepMetrics, engine, loader, cfg: TrainConfig, dist: DistContext,
                  state: TrainState) -> dict[str, Any]:
    """The one host read of a logging interval: metrics to log; stops a run whose updates have
    been skipped `max_nonfinite_steps` times in a row (every rank sees the same skips)."""
    values = interval.read()
    state.nonfinite_steps += values["skipped_steps"]
    if values["worst_skip_streak"] >= cfg.max_nonfinite_steps:
        raise TrainingError(
            f"{values['worst_skip_streak']} consecutive non-finite losses or gradients (updates skipped) "
            f"by step {state.step}; lower optim.lr, use precision=fp32/bf16, or check the data; "
            "the last checkpoint is intact"
        )
    global_batch, seconds = cfg.global_batch(dist.world_size), max(values["interval_s"], 1e-9)
    names = ("loss", "contrastive", "mlm", "mlm_accuracy", "cyclip_cross", "cyclip_inmodal", "temperature", "logit_bias")
    parts = {name: values[name] for name in names if name in values}
    return {
        **parts,
        "lr": float(engine.get_lr()[0]),
        # The temperature's own group is the optimizer's last (losses.param_groups).
        **({"logit_scale_lr": float(engine.get_lr()[-1])} if cfg.optim.logit_scale_lr is not None else {}),
        "samples_per_s": global_batch * values["interval_steps"] / seconds,
        "samples_per_s_per_device": global_batch * values["interval_steps"] / seconds / dist.world_size,
        "data_wait": values["data_wait_s"] / seconds,
        "samples_seen": state.samples_seen,
        "nonfinite_steps": state.nonfinite_steps,
        "skipped_samples": sum(loader.skipped.values()),
        "peak_memory_mb": peak_memory_mb(dist.device),
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- checkpoints and resume ------------------------------------------------------------------------


def save(engine, loader, state: TrainState, checkpointer: Checkpointer, cfg: TrainConfig, dist: DistContext,
         ema: WeightEma | None = None) -> Path:
    """Saves engine + every rank's loader and RNG state (gathered: DeepSpeed keeps rank 0's client
    state) + the EMA weights (the same on every rank, so rank 0's are everyone's)."""
    per_rank = gather_objects({"loader": loader.state_dict(), "rng": rng_state()})
    client_state = {
        "train_state": state.state_dict(),
        "ranks": per_rank,
        "world_size": dist.world_size,
        "zero_stage": cfg.zero.stage,
        "model_name": cfg.model.name,
    }
    if ema is not None:
        client_state[ckpt.EMA_STATE] = ema.state_dict()
    files = {ckpt.MODEL_CONFIG: open_clip_config_json(cfg, engine.module), ckpt.TRAIN_CONFIG: dump_config(cfg)}
    return checkpointer.save(engine, state.step, client_state, files)


def resolve_resume(cfg: TrainConfig, checkpointer: Checkpointer) -> Path | None:
    resume = cfg.checkpoint.resume
    if resume == "none":
        existing = ckpt.complete_tags(checkpointer.dir)
        if existing and checkpointer.dist.is_main:
            print(f"warning: {checkpointer.dir} holds checkpoints up to {existing[-1]} but checkpoint.resume=none: "
                  "training from scratch (pass --resume auto to continue them); each is moved to "
                  f"{ckpt.SUPERSEDED}/ when this run saves the same step", file=sys.stderr, flush=True)
        return None
    if resume == "auto":
        return checkpointer.latest()  # None on a fresh run: start from scratch
    return ckpt.resolve_checkpoint_dir(resume)


def check_resumable(checkpoint_dir: Path, cfg: TrainConfig, dist: DistContext) -> None:
    """Refuses a world-size or ZeRO-stage change before DeepSpeed tries: it fails on those with an
    assert or an attribute error deep in its loader, which would read as a corrupt checkpoint.

    Every rank raises the same error: the ranks exchange verdicts first, so none can exit (and have
    torchrun stop the others) while another still goes on into DeepSpeed's collective loading."""
    verdicts = gather_objects(resume_mismatch(checkpoint_dir, cfg, dist))
    refusal = next((verdict for verdict in verdicts if verdict), None)
    if refusal:
        raise TrainingError(refusal)


def resume_mismatch(checkpoint_dir: Path, cfg: TrainConfig, dist: DistContext) -> str | None:
    """Why this run cannot resume `checkpoint_dir` (None: it can, or Checkpointer.load will say why not)."""
    try:
        with ckpt.safe_torch_load():  # weights_only; mmap: reads only the small client-state entries
            saved = torch.load(checkpoint_dir / "mp_rank_00_model_states.pt", map_location="cpu", mmap=True, weights_only=True)
        saved_world, saved_stage = saved.get("world_size"), saved.get("zero_stage")
    except Exception:  # noqa: BLE001 - unreadable: Checkpointer.load reports why, in one line
        return None
    if saved_world is not None and saved_world != dist.world_size:
        return (f"checkpoint {checkpoint_dir} was written by {saved_world} processes, this run has {dist.world_size}; "
                "exact data resume needs the same world size: relaunch with that many processes")
    if saved_stage is not None and saved_stage != cfg.zero.stage:
        return (f"checkpoint {checkpoint_dir} was written with zero.stage={saved_stage}, this run has "
                f"zero.stage={cfg.zero.stage}; DeepSpeed cannot repartition it: resume with zero.stage={saved_stage}")
    return None


def restore(engine, loader, state: TrainState, checkpointer, checkpoint_dir: Path, cfg: TrainConfig, dist: DistContext,
            ema: WeightEma | None = None) -> None:
    """Engine, counters, this rank's loader cursor, RNG state and the EMA weights from `checkpoint_dir`."""
    check_resumable(checkpoint_dir, cfg, dist)
    client = checkpointer.load(engine, checkpoint_dir)
    try:
        state.load_state_dict(client["train_state"])
        mine = client["ranks"][dist.rank]
        loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"])
        if ema is not None:
            restore_ema(ema, engine.module, client.get(ckpt.EMA_STATE), checkpoint_dir, dist)
    except (KeyError, IndexError, TypeError) as error:
        raise ckpt.CheckpointError(
            f"checkpoint {checkpoint_dir} lacks a usable training state ({type(error).__name__}: {error}); "
            "it was not written by pretrain.train for this run: resume from another step_* dir"
        ) from None
    newer = [tag for tag in ckpt.complete_tags(checkpointer.dir) if tag > ckpt.tag_for_step(state.step)]
    if newer and dist.is_main:
        print(f"warning: resuming from step {state.step} while {checkpointer.dir} holds newer checkpoints "
              f"({', '.join(newer)}); each is moved to {ckpt.SUPERSEDED}/ when this run saves the same step",
              file=sys.stderr, flush=True)


def restore_ema(ema: WeightEma, module, saved: dict | None, checkpoint_dir: Path, dist: DistContext) -> None:
    """The saved EMA state; a checkpoint from a run without EMA starts the average at the restored
    weights (EMA switched on mid-run) rather than at the initial ones."""
    if saved is not None:
        ema.load_state_dict(saved)
        return
    ema.reset(module)
    if dist.is_main:
        print(f"warning: {checkpoint_dir} holds no EMA weights (saved with ema.decay=0): the EMA starts "
              "from the resumed weights", file=sys.stderr, flush=True)


def describe_run(cfg: TrainConfig, dist: DistContext, total_steps: int, resume_from: Path | None) -> str:
    lines = [
        dump_config(cfg).rstrip(),
        f"world size {dist.world_size} ({dist.backend} on {dist.device.type}, launcher {dist.launcher})",
        f"global batch {cfg.global_batch(dist.world_size)} = micro batch {cfg.micro_batch} x accumulation "
        f"{cfg.grad_accum} x world size {dist.world_size}; {total_steps} steps for {cfg.total_samples} samples",
        f"resuming from {resume_from}" if resume_from else "starting from scratch",
    ]
    return "\n".join(lines)


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_received: list[int] = []  # signals seen by this process since main() started


def _on_signal(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT and signal.SIGINT in _received:
        raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the checkpoint
    _received.append(signum)


@contextmanager
def preemption_signals():
    """SIGTERM / SIGUSR1 (SLURM preemption) and SIGINT (Ctrl-C, also as forwarded by torchrun) ask
    the loop to checkpoint and exit 0 after this step. main() holds these handlers for the whole run,
    so a signal during start-up or the final save/export is kept until the loop or the end sees it
    instead of killing a save half-way; a second SIGINT still interrupts at once."""
    previous = {sig: signal.getsignal(sig) for sig in PREEMPTION_SIGNALS}
    for sig in previous:
        signal.signal(sig, _on_signal)
    try:
        yield lambda: bool(_received)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    epilog = ("config keys (YAML file and key=value overrides; values may be ${oc.env:NAME} or "
              "${oc.env:NAME,default}, quoted on the shell):\n" + "\n".join(config_reference()))
    parser = argparse.ArgumentParser(prog=prog_name("clip_pretrain.pretrain.train"), description=__doc__.split("\n\n")[0],
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see pretrain/configs/)")
    parser.add_argument("--resume", help="'auto' (latest complete checkpoint in run_dir), 'none', or a checkpoint dir")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML, after overrides) and exit without training")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4")
    return parser.parse_args(argv)


def rank_error(dist: DistContext, message: str) -> None:
    """One `error: [rank N] ...` line in a single write: print() writes the text and its newline
    separately, so two ranks failing together on one stderr pipe run their lines together."""
    sys.stderr.write(f"error: [rank {dist.rank}] {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    # torch 2.14 marks the autograd-aware all_gather (what gathering features with gradient needs)
    # as deprecated, with no drop-in replacement yet; say it once in the docs, not once per rank.
    warnings.filterwarnings("ignore", message=r".*all_gather.* is deprecated", category=FutureWarning)
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    try:
        import open_clip

        ckpt.check_model_config(open_clip.get_model_config(cfg.model.name) or {}, f"model.name {cfg.model.name}")
        if cfg.model.pretrained is not None:
            from clip_pretrain.pretrain.model import resolve_pretrained

            ckpt.check_weights_file(resolve_pretrained(cfg.model.name, cfg.model.pretrained)[0])
    except (ckpt.CheckpointError, ValueError) as error:
        print(f"error: model: {error}", file=sys.stderr)
        return 2
    try:  # before DeepSpeed's ~15 s start-up: a wrong data path fails at once, in one line
        from clip_pretrain.data.specs import resolve_sources

        resolve_sources(cfg.data.train, cfg.data.split)
    except (ValueError, OSError) as error:
        print(f"error: data.train: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1  # as when the loader found it (callers and tests read 1 as "bad data", 2 as "bad config")
    from clip_pretrain.eval.training import evaluate_engine  # CLI wiring: the trainer is handed its evaluator

    _received.clear()
    with preemption_signals():
        dist = init_distributed()
        try:
            train(cfg, dist, evaluate=evaluate_engine)
        except (TrainingError, ckpt.CheckpointError, ConfigError, ValueError, FileNotFoundError) as error:
            rank_error(dist, str(error).splitlines()[0])
            return 1
        except KeyboardInterrupt:
            rank_error(dist, f"interrupted twice: stopped without saving; the last complete checkpoint in "
                             f"{cfg.run_dir}/checkpoints is intact (resume with --resume auto)")
            return 130
        finally:
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
