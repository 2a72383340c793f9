"""Fixtures for the model/loss tests: tiny models built on CPU."""
from __future__ import annotations

import pytest
import torch

from clip_pretrain.pretrain.losses import LossConfig
from clip_pretrain.pretrain.model import DualEncoder, ModelConfig, build_model


@pytest.fixture
def tiny_infonce() -> DualEncoder:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="clip-tiny"), LossConfig(kind="infonce"))


@pytest.fixture
def tiny_mlm() -> DualEncoder:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="clip-tiny"), LossConfig(kind="infonce", mlm_weight=0.2))



@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine two spinning
    threads per process run ~20x slower than one. Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
