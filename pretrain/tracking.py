"""Rank-0 run tracking: tqdm progress bar, RUN/metrics.jsonl (always), and the backends named in
`logging.backends`: wandb (offline unless a key is set) and TensorBoard (RUN/tensorboard)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from clip_pretrain.pretrain.config import LoggingConfig, config_to_dict

WANDB_MODES = ("online", "offline", "disabled")


def wandb_mode(cfg: LoggingConfig) -> str:
    """The config's mode when set, else $WANDB_MODE, else online only when an API key is configured."""
    if cfg.wandb_mode is not None:
        return cfg.wandb_mode
    if os.environ.get("WANDB_MODE") in WANDB_MODES:
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_init_kwargs(run_dir: Path, config: Any) -> dict[str, Any]:
    """wandb.init's arguments: config keys win when set, the WANDB_* environment otherwise."""
    cfg: LoggingConfig = config.logging
    return {
        "project": cfg.wandb_project or os.environ.get("WANDB_PROJECT") or "clip-pretrain",
        "entity": cfg.wandb_entity or os.environ.get("WANDB_ENTITY") or None,
        "group": cfg.wandb_group,
        "tags": list(cfg.wandb_tags) or None,
        "dir": str(run_dir),
        "mode": wandb_mode(cfg),
        "name": run_dir.name,
        "config": config_to_dict(config),  # the run config holds no secrets: keys stay in env
        "resume": "allow",
        "id": _wandb_id(run_dir),
    }


def open_metrics(run_dir: Path, start_step: int, resumed_from: Path | None) -> TextIO:
    """RUN/metrics.jsonl for appending. A resumed run first writes {"event": "resume", ...}, and a
    run from scratch over an earlier run's lines {"event": "restart", ...}: records after the marker
    supersede those of the same or later steps before it."""
    path = run_dir / "metrics.jsonl"
    earlier = path.is_file() and path.stat().st_size > 0
    handle = open(path, "a", buffering=1)
    if resumed_from is not None or earlier:
        event = {"event": "resume" if resumed_from is not None else "restart", "step": start_step, "time": time.time(),
                 "checkpoint": str(resumed_from) if resumed_from is not None else None}
        handle.write(json.dumps(event) + "\n")
    return handle


class Tracker:
    """Logs on rank 0 only; other ranks get a no-op tracker."""

    def __init__(self, run_dir: Path, config: Any, enabled: bool, total_steps: int, start_step: int,
                 resumed_from: Path | None = None) -> None:
        self.enabled = enabled
        self.cfg: LoggingConfig = config.logging
        self.bar = None
        self.wandb_run = None
        self.tensorboard = None
        self._tensorboard_step, self._tensorboard_written = -1, set()
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.metrics_file = open_metrics(run_dir, start_step, resumed_from)
        if self.cfg.progress:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if "wandb" in self.cfg.backends and wandb_mode(self.cfg) != "disabled":
            import wandb

            self.wandb_run = wandb.init(**wandb_init_kwargs(run_dir, config))
        if "tensorboard" in self.cfg.backends:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the earlier run's events from the resumed step on.
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)

    def progress(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(
                {k: f"{metrics[k]:.4g}" for k in ("loss", "samples_per_s", "lr", "temperature", "data_wait") if k in metrics},
                refresh=False,
            )
            self.bar.refresh()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        self.metrics_file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.tensorboard is not None:
            self._tensorboard_scalars(step, metrics)

    def _tensorboard_scalars(self, step: int, metrics: dict[str, Any]) -> None:
        """Numbers only, once per (step, name): the final record repeats the last step's metrics
        together with the final evaluation, which would draw each curve's last point twice."""
        if step != self._tensorboard_step:
            self._tensorboard_step, self._tensorboard_written = step, set()
        for name, value in metrics.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if number and name not in self._tensorboard_written:
                self.tensorboard.add_scalar(name, value, step)
                self._tensorboard_written.add(name)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run dir, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_id"
    if not id_file.is_file():
        import uuid

        id_file.write_text(uuid.uuid4().hex[:16])
    return id_file.read_text().strip()
