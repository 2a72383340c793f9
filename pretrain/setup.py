"""Builds what a run needs from its config: run dir, model, engine, loader, checkpointer."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from clip_pretrain.common import checkpoint_files as ckpt
from clip_pretrain.pretrain.checkpoint import Checkpointer
from clip_pretrain.pretrain.config import TrainConfig, dump_config
from clip_pretrain.pretrain.distributed import DistContext, all_true

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    engine: Any
    optimizer: Any  # the torch AdamW inside the engine (train_step sets its found_inf)
    loader: Any  # StreamingLoader: uint8 images
    normalize: Any  # data.device.DeviceNormalizer: the train transform's Normalize, on the device
    checkpointer: Checkpointer
    preprocess_val: Callable
    tokenizer: Callable
    decode: Any = None  # data.device_decode.DeviceDecoder with data.decode=gpu: JPEGs decoded on the device


RUN_LOCK = ".lock"
_held_locks: dict[str, Any] = {}  # run dir -> FileLock, held until this process exits


def _lock_run_dir(run_dir: Path) -> None:
    """Makes this process the run dir's only trainer. The OS drops an flock when its holder dies,
    so a lock left by a killed run never blocks the next one; the file only says who held it."""
    from filelock import FileLock, Timeout

    key = str(run_dir.resolve())
    if key in _held_locks:
        return
    lock = FileLock(run_dir / RUN_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = json.loads((run_dir / RUN_LOCK).read_text())
            who = f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        raise ckpt.CheckpointError(
            f"run_dir {run_dir} is in use by another trainer ({who}); wait for it to finish, stop it, "
            "or choose another run_dir"
        ) from None
    _held_locks[key] = lock
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (run_dir / RUN_LOCK).write_text(json.dumps(holder))


def prepare_run_dir(cfg: TrainConfig, dist: DistContext) -> Path:
    """Creates and locks the run dir, proves it is writable (before any compute) and saves the
    resolved config. Every rank raises the same way when rank 0 cannot (no rank is left waiting)."""
    run_dir = Path(cfg.run_dir)
    problem: str | None = None
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            _lock_run_dir(run_dir)  # before anything is written: a second trainer changes nothing
            probe = run_dir / ".write_test"
            probe.write_bytes(b"\0" * 1024 * 1024)  # a full disk fails here, not at the first save
            probe.unlink()
            (run_dir / "config.yaml").write_text(dump_config(cfg))
        except OSError as error:
            reason = "disk full" if error.errno == errno.ENOSPC else error.strerror or str(error)
            problem = f"run_dir {run_dir} is not writable ({reason}); free space or choose another run_dir"
        except ckpt.CheckpointError as error:
            problem = str(error)
    if not all_true(problem is None, dist.device):
        raise ckpt.CheckpointError(problem or f"rank 0 could not prepare run_dir {run_dir} (see its error)")
    return run_dir


def build_everything(cfg: TrainConfig, dist: DistContext) -> RunParts:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clip_pretrain.data.augment import train_transform
    from clip_pretrain.data.device import DeviceNormalizer
    from clip_pretrain.data.device_decode import CropPlan, DeviceDecoder
    from clip_pretrain.data.loader import build_loader
    from clip_pretrain.pretrain.engine import build_engine
    from clip_pretrain.pretrain.model import build_model

    configure_backends(dist.device)
    model = build_model(cfg.model, cfg.loss).to(dist.device)
    preprocess_cfg = PreprocessCfg(**model.clip.visual.preprocess_cfg)
    preprocess_train, mean, std = train_transform(model.clip.visual.preprocess_cfg, cfg.augment)
    preprocess_val = image_transform_v2(preprocess_cfg, is_train=False)
    tokenizer = open_clip.get_tokenizer(cfg.model.name)
    engine, optimizer = build_engine(model, cfg, dist)
    mlm_on = cfg.loss.mlm_weight > 0
    loader = build_loader(
        cfg.data,
        batch_size=cfg.micro_batch,
        preprocess=preprocess_train,
        pin_memory=dist.device.type == "cuda",
        tokenizer=tokenizer,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        mlm_probability=cfg.loss.mlm_probability if mlm_on else None,
        mask_token_id=tokenizer.vocab_size if mlm_on else None,
        vocab_size=tokenizer.vocab_size if mlm_on else None,
    )
    per_epoch = loader.samples_per_epoch
    if cfg.data.mode == "epoch" and per_epoch is not None and cfg.micro_batch * dist.world_size > per_epoch:
        raise ValueError(
            f"micro_batch: {cfg.micro_batch} x {dist.world_size} processes is more than one epoch of data "
            f"({per_epoch} samples), so a batch would pair each sample with its own copy as a negative; "
            "lower micro_batch or add data"
        )
    checkpointer = Checkpointer(Path(cfg.run_dir), cfg.checkpoint.keep_last, dist)
    decode = None
    if cfg.data.decode == "gpu":
        if dist.device.type != "cuda" and dist.rank == 0:
            log.warning("data.decode=gpu on %s: JPEGs are decoded in the trainer process, not in the loader "
                        "workers (meant for CUDA; use data.decode=cpu here)", dist.device)
        decode = DeviceDecoder(CropPlan.from_transform(preprocess_train), dist.device)
    return RunParts(engine, optimizer, loader, DeviceNormalizer(mean, std), checkpointer, preprocess_val, tokenizer,
                    decode)


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 for fp32 matmuls and convolutions (what open_clip_train and timm do; bf16/fp16
    autocast regions are unaffected), and cuDNN autotuning (input shapes are fixed per run)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def open_clip_config_json(cfg: TrainConfig, model) -> str:
    """The open_clip hub-style config saved beside every checkpoint and export."""
    return json.dumps(
        {"model_name": cfg.model.name, "model_cfg": model.model_config, "preprocess_cfg": model.clip.visual.preprocess_cfg},
        indent=2,
    )


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
