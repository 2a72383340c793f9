"""Fixtures for the model/loss tests: tiny models built on CPU."""
from __future__ import annotations

import pytest
import torch

from pretrain.losses import LossConfig
from pretrain.model import DualEncoder, ModelConfig, build_model


@pytest.fixture
def tiny_infonce() -> DualEncoder:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="clip-tiny"), LossConfig(kind="infonce"))


@pytest.fixture
def tiny_mlm() -> DualEncoder:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="clip-tiny"), LossConfig(kind="infonce", mlm_weight=0.2))

