"""Checkpoints during training: DeepSpeed save/resume with an atomic `latest`, pruning, and the
run's own bookkeeping. The file format (names, safe loading, consolidation, export) is
common.checkpoint_files'.

A checkpoint only becomes `latest` after every rank has written its part and COMPLETE exists, so a
kill during a save leaves the previous checkpoint as latest; a failed save removes its own partial
directory and never touches older ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from clip_pretrain.common.checkpoint_files import (
    COMPLETE, LATEST, SUPERSEDED, CheckpointError, atomic_write, complete_tags, latest_tag, load_error,
    resolve_checkpoint_dir, resume_tag, safe_torch_load, tag_for_step,
)
from clip_pretrain.pretrain.distributed import DistContext, all_true, barrier


# --- saving and resuming during training ----------------------------------------------------------


class Checkpointer:
    """Saves and restores DeepSpeed checkpoints under RUN/checkpoints with an atomic `latest`."""

    def __init__(self, run_dir: Path, keep_last: int, dist: DistContext) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.dist = dist
        self.resumed_tag: str | None = None  # set by load(): saving that step again would change nothing

    def latest(self) -> Path | None:
        """The checkpoint `--resume auto` continues from (None: nothing saved yet); raises
        CheckpointError when `latest` names something that is not a complete checkpoint here."""
        tag = resume_tag(self.dir)
        return self.dir / tag if tag else None

    def save(self, engine, step: int, client_state: dict[str, Any], files: dict[str, str]) -> Path:
        """Saves step `step`; `files` (name -> text) are written into the checkpoint dir by rank 0."""
        tag = tag_for_step(step)
        target = self.dir / tag
        if tag == self.resumed_tag:
            return target  # resumed at this step and took none since (e.g. preempted at once): identical
        if self.dist.is_main and target.exists():
            self._move_aside(target)  # written by another run or timeline: never mix files into it
        barrier()
        error: Exception | None = None
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
            if self.dist.is_main:
                for name, text in files.items():
                    (target / name).write_text(text)
        except OSError as caught:
            error = caught
        if not all_true(error is None, self.dist.device):
            if self.dist.is_main:
                shutil.rmtree(target, ignore_errors=True)
            previous = latest_tag(self.dir) or "none"
            reason = str(error).splitlines()[0] if error else "another rank failed to write its part"
            raise CheckpointError(
                f"could not save checkpoint {target}: {reason}; the previous checkpoint ({previous}) is intact"
            )
        if self.dist.is_main:
            # DeepSpeed drops its zero_to_fp32.py / zero_to_torch.py beside every save; they unpickle
            # with weights_only=False. consolidated_state_dict / export replace them safely.
            for script in ("zero_to_fp32.py", "zero_to_torch.py"):
                (self.dir / script).unlink(missing_ok=True)
            (target / COMPLETE).write_text(json.dumps({"step": step}))
            atomic_write(self.dir / LATEST, lambda tmp: tmp.write_text(tag))
            self._prune(keep=tag)
        barrier()
        return target

    def _move_aside(self, target: Path) -> None:
        """A complete checkpoint already at this step came from another run in this run dir (a resume
        from an older step, or resume=none): keep it under checkpoints/superseded/ instead of
        skipping this save or overwriting it in place. A partial one is debris of a killed save."""
        if not (target / COMPLETE).is_file():
            shutil.rmtree(target, ignore_errors=True)
            return
        if latest_tag(self.dir) == target.name:
            # Until the new save completes, `latest` must name a complete checkpoint: the newest other one.
            others = [tag for tag in complete_tags(self.dir) if tag != target.name]
            if others:
                atomic_write(self.dir / LATEST, lambda tmp: tmp.write_text(others[-1]))
            else:
                (self.dir / LATEST).unlink()
        aside = self.dir / SUPERSEDED / f"{target.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        aside.parent.mkdir(exist_ok=True)
        os.replace(target, aside)
        print(f"warning: {target} came from an earlier run in this run_dir; moved to {aside}", flush=True)

    def _prune(self, keep: str) -> None:
        complete = [self.dir / tag for tag in complete_tags(self.dir)]
        for old in complete[: -self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
        for partial in self.dir.glob("step_*"):
            if not (partial / COMPLETE).is_file() and partial.name != keep:
                shutil.rmtree(partial, ignore_errors=True)  # left by a kill during an earlier save

    def load(self, engine, checkpoint_dir: Path) -> dict[str, Any]:
        """Restores model, optimizer, scheduler (and their ZeRO partitions); returns the client state."""
        checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir)
        try:
            with safe_torch_load():
                load_path, client_state = engine.load_checkpoint(
                    str(checkpoint_dir.parent), tag=checkpoint_dir.name, load_module_strict=True
                )
        except Exception as error:  # noqa: BLE001 - any unpickling/format/shape failure becomes one line
            raise load_error(checkpoint_dir, error) from None
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {checkpoint_dir}; is it complete?")
        if checkpoint_dir.parent.resolve() == self.dir.resolve():
            self.resumed_tag = checkpoint_dir.name
        return client_state
