"""Fixtures for the loader tests (shards are written by loader_helpers.write_shards)."""
from __future__ import annotations

import signal

import open_clip
import pytest

from clip_pretrain.data.loader import DataConfig, StreamingLoader, build_loader

IMAGE_SIZE = 32


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a hanging test instead of blocking the suite (the loader must never hang)."""
    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded 90 s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(90)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="session")
def preprocess():
    return open_clip.image_transform(IMAGE_SIZE, is_train=True)  # random crops: resume must replay them


@pytest.fixture
def make_loader(tokenizer, preprocess):
    def make(train, *, batch_size: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1,
             **overrides) -> StreamingLoader:
        mlm = overrides.pop("mlm_probability", None)
        cfg = DataConfig(train=train, **{"workers": 0, "shuffle_buffer": 8, **overrides})
        return build_loader(cfg, batch_size=batch_size, preprocess=preprocess, tokenizer=tokenizer, seed=seed,
                            rank=rank, world_size=world_size, mlm_probability=mlm)
    return make
