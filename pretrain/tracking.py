"""Rank-0 run tracking: tqdm progress bar, metrics.jsonl, and wandb (offline unless a key is set)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pretrain.config import LoggingConfig, config_to_dict


def wandb_mode(cfg: LoggingConfig) -> str:
    """Explicit mode wins; otherwise online only when an API key is configured."""
    if cfg.wandb_mode is not None:
        return cfg.wandb_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """Logs on rank 0 only; other ranks get a no-op tracker."""

    def __init__(self, run_dir: Path, config: Any, enabled: bool, total_steps: int, start_step: int) -> None:
        self.enabled = enabled
        self.cfg: LoggingConfig = config.logging
        self.bar = None
        self.wandb_run = None
        if not enabled:
            return
        self.metrics_file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
        if self.cfg.progress:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        mode = wandb_mode(self.cfg)
        if mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=self.cfg.wandb_project,
                dir=str(run_dir),
                mode=mode,
                name=Path(run_dir).name,
                config=config_to_dict(config),  # the run config holds no secrets: keys stay in env
                resume="allow",
                id=_wandb_id(Path(run_dir)),
            )

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


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run dir, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_id"
    if not id_file.is_file():
        import uuid

        id_file.write_text(uuid.uuid4().hex[:16])
    return id_file.read_text().strip()
