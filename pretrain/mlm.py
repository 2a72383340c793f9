"""Masked language modelling on the CLIP text tower (DeCLIP-style auxiliary objective).

Design followed: DeCLIP (Li et al., ICLR 2022, "Supervision Exists Everywhere") adds a BERT-style
MLM loss on the *same* text encoder that CLIP trains, weighted ~0.2 against InfoNCE, and runs the
MLM pass with bidirectional attention while the contrastive pass stays causal. We prefer it over
FLAVA (separate text encoder + multimodal fusion encoder, MLM on both) and ALBEF (MLM through an
image-grounded cross-attention encoder): both need extra towers, so the exported model would no
longer be a plain open_clip CLIP, and their MLM mostly trains the fusion layers we never export.
DeCLIP's variant only adds a small head that is dropped at export time.

Mechanics:
- The [MASK] id is `vocab_size` (one past open_clip's vocabulary). open_clip's token_embedding is
  NOT grown (that would change the exported state dict); a separate learnable `mask_embedding`
  vector replaces the embedding at masked positions. The contrastive pass never sees the [MASK]
  id: open_clip pools text at the argmax token id (EOT is the highest id) and a larger id would
  move the pooling position.
- Second pass: token embedding + positional embedding + the text transformer with NO causal mask
  (a key-padding mask hides the pad positions after EOT) + ln_final, then the head: dense, GELU,
  LayerNorm, and a decoder tied to token_embedding.weight with its own bias -> [B, L, V].
- ZeRO-3 gathers a parameter only inside its owning module's forward. This pass reads
  `positional_embedding` (a direct parameter of the CLIP module, or of TextTransformer) and, in
  the tied decoder, `token_embedding.weight` outside their modules, so both are registered with
  `deepspeed.zero.register_external_parameter` on the MLM module, whose forward runs inside
  DualEncoder.forward. That call only records the parameter in `module._external_params`, which
  nothing but ZeRO-3's hooks read, so it is harmless for ZeRO-0/1/2 and plain PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F



def text_tower_parts(clip: nn.Module) -> nn.Module:
    """The module holding token_embedding / positional_embedding / transformer / ln_final.

    open_clip's CLIP unpacks its TextTransformer onto itself; CustomTextCLIP keeps it in `.text`.
    Raises ValueError for text towers this pass cannot run (HF transformers, CoCa class token).
    """
    text = getattr(clip, "text", clip)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(text, name) for name in needed):
        raise ValueError(f"loss.mlm_weight: MLM needs open_clip's own text transformer, not {type(text).__name__}; set mlm_weight: 0")
    if getattr(text, "cls_emb", None) is not None:
        raise ValueError("loss.mlm_weight: MLM does not support text towers with a class token (embed_cls); set mlm_weight: 0")
    return text


def key_padding_mask(input_ids: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B*heads, L, L]: -inf on keys after the last non-pad token of each row.

    Pads are the trailing zeros; id 0 is also a real token ('!') for open_clip's tokenizer, so a
    zero inside the caption stays visible.
    """
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)
    last = torch.where(input_ids != 0, positions, -1).amax(dim=1)  # [B]
    hidden = positions[None, :] > last[:, None]  # [B, L] True = pad key
    mask = torch.zeros(batch, length, length, dtype=dtype, device=input_ids.device)
    mask.masked_fill_(hidden[:, None, :], float("-inf"))
    return mask.repeat_interleave(heads, dim=0)


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> tied decoder (+ own bias). [B, L, W] -> [B, L, V]."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(hidden, decoder_weight.to(hidden.dtype), self.bias.to(hidden.dtype))


class TextMLM(nn.Module):
    """Bidirectional MLM pass over the CLIP text tower; owns only mask_embedding and the head.

    The CLIP model is passed to forward (not stored as a submodule) so its weights are not
    registered twice and the exported state dict stays open_clip-shaped.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        text = text_tower_parts(clip)
        self.vocab_size: int = text.token_embedding.num_embeddings
        self.mask_token_id: int = self.vocab_size
        width = text.token_embedding.embedding_dim
        self.mask_embedding = nn.Parameter(torch.empty(width).normal_(std=0.02))
        self.head = MLMHead(width, self.vocab_size)
        _register_external(self, text.positional_embedding)
        _register_external(self, text.token_embedding.weight)

    def forward(self, clip: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] (mask id = vocab_size; ids are not range-checked here, that would read
        the device: data.masking makes them) -> logits [B, L, V], or [M, V] at M positions given as
        flat indices into B*L (int64 [M], what the loader sends: no device sync) or as a bool mask
        [B, L]. The vocabulary projection is the big tensor: at B=256, L=77 the full [B, L, V]
        would take ~3.9 GB in fp32."""
        text = text_tower_parts(clip)
        cast_dtype = text.transformer.get_cast_dtype()
        is_mask = input_ids == self.mask_token_id
        # Call the embedding module (not .weight[ids]) so ZeRO-3 gathers it in its own hook.
        x = text.token_embedding(input_ids.masked_fill(is_mask, 0)).to(cast_dtype)
        x = torch.where(is_mask[..., None], self.mask_embedding.to(cast_dtype), x)
        x = x + text.positional_embedding[: input_ids.shape[1]].to(cast_dtype)
        # No causal mask: every token sees the whole caption (pads excluded).
        attn_mask = key_padding_mask(input_ids, text.transformer.resblocks[0].attn.num_heads, x.dtype)
        x = text.transformer(x, attn_mask=attn_mask)
        x = text.ln_final(x)
        if positions is not None:
            x = x[positions] if positions.dtype == torch.bool else x.flatten(0, 1).index_select(0, positions)
        return self.head(x, text.token_embedding.weight)


def _register_external(module: nn.Module, param: nn.Parameter) -> None:
    """deepspeed.zero.register_external_parameter when DeepSpeed is installed (see module doc)."""
    try:
        import deepspeed  # `deepspeed.zero` is an attribute of the package, not an importable path
    except ImportError:
        return
    deepspeed.zero.register_external_parameter(module, param)
