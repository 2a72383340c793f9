"""ZeRO-3 (DeepSpeed on CPU, 1 process): with every parameter partitioned, DualEncoder.forward
(incl. the MLM pass and logit_scale/bias read outside clip.forward) gives the plain model's loss."""
from __future__ import annotations

import pytest

from tests.pretrain.runner import run_one_rank_script

SCRIPT = """
import torch
torch.set_num_threads(1)
import deepspeed, open_clip
from clip_pretrain.pretrain.losses import LossConfig, compute_objective, param_groups
from tests.model.masking import mask_tokens
from clip_pretrain.pretrain.model import ModelConfig, build_model
loss_cfg = LossConfig(kind="siglip", mlm_weight=0.2)
torch.manual_seed(0)
model, plain = (build_model(ModelConfig(name="clip-tiny"), loss_cfg) for _ in range(2))
plain.load_state_dict(model.state_dict())
texts = open_clip.get_tokenizer("clip-tiny")(["a dog on the grass", "a cat on a sofa"])
masked, labels = mask_tokens(texts, 49408, 0.5, torch.Generator().manual_seed(0))
images = torch.randn(2, 3, 64, 64)
deepspeed.init_distributed(dist_backend="gloo")
config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
engine, *_ = deepspeed.initialize(model=model, config=config, optimizer=optimizer)
assert engine.module.clip.positional_embedding.numel() == 0, "not partitioned"
total, parts = compute_objective(engine(images, texts, masked), {"mlm_labels": labels}, loss_cfg)
expected, expected_parts = compute_objective(plain(images, texts, masked), {"mlm_labels": labels}, loss_cfg)
assert torch.allclose(total, expected, atol=1e-5), (float(total), float(expected))
assert torch.allclose(parts["mlm"], expected_parts["mlm"], atol=1e-5)
engine.backward(total)
engine.step()
print("ZERO3_OK")
"""


@pytest.mark.slow
def test_zero3_forward_matches_plain_model() -> None:
    result = run_one_rank_script(SCRIPT)
    assert "ZERO3_OK" in result.stdout, result.stderr[-3000:]
