"""Contrastive (InfoNCE / SigLIP), CyCLIP consistency and MLM losses: pure functions of tensors.

Distributed convention (same as open_clip + DDP/DeepSpeed): every rank returns its own loss; the
engine averages parameter gradients over ranks. With that averaging, the update equals one process
on the concatenated global batch. Features may arrive in bf16; the losses run in fp32 because the
[B, B] logits and their softmax are the numerically sensitive part and cost little.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn
import torch.nn.functional as F

LOSS_KINDS = ("infonce", "siglip")
IGNORE_INDEX = -100


@dataclass
class LossConfig:
    """Training objective. `mlm_weight == 0` switches MLM off (no MLM head, no second text pass)."""

    kind: str = "infonce"
    local_loss: bool = False
    gather_with_grad: bool = True
    max_logit_scale: float = 100.0
    # Temperature as the logit multiplier exp(raw) = 1/T, not its log. null: CLIP 1/0.07, SigLIP 10.
    init_logit_scale: float | None = None
    min_logit_scale: float | None = 1.0  # lower clamp of exp(raw) in the loss; null: none
    init_logit_bias: float | None = None  # SigLIP only; null: -10
    mlm_weight: float = 0.0
    mlm_probability: float = 0.15
    cyclip_cross_weight: float = 0.0  # CyCLIP (Goel et al. 2022) regularisers; 0 = off, the paper uses 0.25
    cyclip_inmodal_weight: float = 0.0
    accum_features: bool = False  # grad_accum > 1: negatives from the whole accumulated batch (pretrain/accum.py)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"kind: {self.kind!r} is not a loss kind; use one of {', '.join(LOSS_KINDS)}")
        for name in ("local_loss", "gather_with_grad", "accum_features"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.max_logit_scale, (int, float)) and self.max_logit_scale > 1):
            raise ValueError(f"max_logit_scale: must be a number > 1 (open_clip uses 100), got {self.max_logit_scale!r}")
        if not (isinstance(self.mlm_weight, (int, float)) and self.mlm_weight >= 0):
            raise ValueError(f"mlm_weight: must be >= 0 (0 turns MLM off; DeCLIP uses ~0.2), got {self.mlm_weight!r}")
        if not (isinstance(self.mlm_probability, (int, float)) and 0 < self.mlm_probability < 1):
            raise ValueError(f"mlm_probability: must be in (0, 1) (BERT uses 0.15), got {self.mlm_probability!r}")
        for name, value in (("cyclip_cross_weight", self.cyclip_cross_weight), ("cyclip_inmodal_weight", self.cyclip_inmodal_weight)):
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ValueError(f"{name}: must be a finite number >= 0 (0 is off; CyCLIP uses 0.25), got {value!r}")
        if self.kind == "siglip" and self.local_loss:
            raise ValueError("local_loss: SigLIP is already local (neighbour exchange); set local_loss: false")
        _check_temperature(self)

    @property
    def mlm_enabled(self) -> bool:
        return self.mlm_weight > 0


def _check_temperature(cfg: LossConfig) -> None:
    """init/min scale positive and ordered min <= init <= max; a bias only for SigLIP."""
    for name in ("init_logit_scale", "min_logit_scale"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name}: must be a number > 0 (the multiplier 1/temperature) or null, got {value!r}")
    low = cfg.min_logit_scale or 0.0
    if low >= cfg.max_logit_scale:
        raise ValueError(f"min_logit_scale: {low} must be below max_logit_scale ({cfg.max_logit_scale}); lower it")
    init = log_temperature_init(cfg)[0]
    if not low <= math.exp(init) <= cfg.max_logit_scale:
        raise ValueError(f"init_logit_scale: {math.exp(init):g} lies outside [min_logit_scale, max_logit_scale] "
                         f"= [{low:g}, {cfg.max_logit_scale:g}]; pick a value between them")
    if cfg.init_logit_bias is not None and cfg.kind != "siglip":
        raise ValueError(f"init_logit_bias: only SigLIP has a logit bias (loss.kind={cfg.kind}); set it to null")


def gather_features(x: torch.Tensor, rank: int, world_size: int, *, with_grad: bool = True) -> torch.Tensor:
    """All-gather [b, D] from every rank -> [world_size * b, D] in rank order.

    with_grad=True backpropagates through the gather (the gradient of every rank's loss reaches
    every rank's features). with_grad=False gathers without autograd and splices the local,
    differentiable tensor back in at `rank` so the local features still get their gradient.
    """
    if world_size == 1:
        return x
    if with_grad:
        return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def logit_scale_value(logit_scale: torch.Tensor, max_logit_scale: float = 100.0,
                      min_logit_scale: float | None = None) -> torch.Tensor:
    """Multiplicative temperature exp(raw) clamped to [min_logit_scale, max_logit_scale], shape of
    `logit_scale`; beyond a bound its gradient is zero (clamp): the loss no longer pushes it further.

    The clamp lives in the loss, not as an in-place clamp after the optimiser step: ZeRO keeps an
    fp32 master copy that would overwrite such a clamp on the next step.
    """
    return logit_scale.float().exp().clamp(min=min_logit_scale, max=max_logit_scale)


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    rank: int = 0,
    world_size: int = 1,
    local_loss: bool = False,
    gather_with_grad: bool = True,
    max_logit_scale: float = 100.0,
    min_logit_scale: float | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch.

    image_features, text_features: [b, D] L2-normalised local features; logit_scale: raw log-scale
    ([1] or []). local_loss=True computes only this rank's rows ([b, W*b] logits) as open_clip does.
    Returns a scalar.
    """
    image_features, text_features = image_features.float(), text_features.float()
    scale = logit_scale_value(logit_scale, max_logit_scale, min_logit_scale)
    all_images = gather_features(image_features, rank, world_size, with_grad=gather_with_grad)
    all_texts = gather_features(text_features, rank, world_size, with_grad=gather_with_grad)
    if local_loss:
        logits_per_image = scale * image_features @ all_texts.T  # [b, W*b]
        logits_per_text = scale * text_features @ all_images.T
        labels = torch.arange(image_features.shape[0], device=image_features.device) + rank * image_features.shape[0]
    else:
        logits_per_image = scale * all_images @ all_texts.T  # [W*b, W*b]
        logits_per_text = logits_per_image.T
        labels = torch.arange(all_images.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _sigmoid_block(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positives: bool,
) -> torch.Tensor:
    """-sum log sigmoid(label * logit) / b for one [b, b'] block; the diagonal is positive only
    when `positives` (the local block)."""
    logits = scale * image_features @ text_features.T + bias
    labels = -torch.ones_like(logits)
    if positives:
        labels = labels + 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


class _NeighbourExchange(torch.autograd.Function):
    """Send `tensor` to `to_rank`, receive from `from_rank`; backward sends gradients the other way."""

    @staticmethod
    def forward(ctx, from_rank: int, to_rank: int, tensor: torch.Tensor) -> torch.Tensor:
        ctx.from_rank, ctx.to_rank = from_rank, to_rank
        received = torch.empty_like(tensor)
        ops = [dist.P2POp(dist.isend, tensor.contiguous(), to_rank), dist.P2POp(dist.irecv, received, from_rank)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return received

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, _NeighbourExchange.apply(ctx.to_rank, ctx.from_rank, grad.contiguous())


class _NeighbourExchangeBidir(torch.autograd.Function):
    """Send one tensor to each neighbour and receive one from each, in a single batched P2P call."""

    @staticmethod
    def forward(ctx, left: int, right: int, to_left: torch.Tensor, to_right: torch.Tensor):
        ctx.left, ctx.right = left, right
        from_left, from_right = torch.empty_like(to_right), torch.empty_like(to_left)
        ops = [
            dist.P2POp(dist.isend, to_right.contiguous(), right),
            dist.P2POp(dist.isend, to_left.contiguous(), left),
            dist.P2POp(dist.irecv, from_right, right),
            dist.P2POp(dist.irecv, from_left, left),
        ]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return from_right, from_left

    @staticmethod
    def backward(ctx, grad_from_right: torch.Tensor, grad_from_left: torch.Tensor):
        # What came from the right goes back to the right (i.e. it is now "to_right" seen mirrored).
        grad_to_left, grad_to_right = _NeighbourExchangeBidir.apply(
            ctx.right, ctx.left, grad_from_right.contiguous(), grad_from_left.contiguous()
        )
        return None, None, grad_to_left, grad_to_right


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_logit_scale: float = 100.0,
    min_logit_scale: float | None = None,
) -> torch.Tensor:
    """Sigmoid pairwise loss (SigLIP) of this rank's images against every rank's texts.

    image_features, text_features: [b, D] normalised; logit_scale raw log-scale, logit_bias additive
    ([1] or []). Text features travel between neighbouring ranks in both directions (open_clip's
    'bidir' scheme), so no [W*b, W*b] logits or all-gather are ever built. Returns a scalar.
    """
    image_features, text_features = image_features.float(), text_features.float()
    scale, bias = logit_scale_value(logit_scale, max_logit_scale, min_logit_scale), logit_bias.float()
    loss = _sigmoid_block(image_features, text_features, scale, bias, positives=True)
    if world_size == 1:
        return loss
    right, left = (rank + 1) % world_size, (rank - 1) % world_size
    to_left = to_right = text_features
    num_bidir, remainder = divmod(world_size - 1, 2)
    for _ in range(num_bidir):
        from_right, from_left = _NeighbourExchangeBidir.apply(left, right, to_left, to_right)
        loss = loss + _sigmoid_block(image_features, from_right, scale, bias, positives=False)
        loss = loss + _sigmoid_block(image_features, from_left, scale, bias, positives=False)
        # Pass each received block on in the direction it was travelling.
        to_left, to_right = from_right, from_left
    if remainder:
        from_left = _NeighbourExchange.apply(left, right, to_right)
        loss = loss + _sigmoid_block(image_features, from_left, scale, bias, positives=False)
    return loss


def cyclip_losses(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    rank: int = 0,
    world_size: int = 1,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CyCLIP's (cross-modal, in-modal) cyclic consistency over the global batch of N pairs.

    image_features I, text_features T: [b, D] L2-normalised local features. With every rank's
    features gathered, cross = ||I T^T - T I^T||_F^2 / N and in-modal = ||I I^T - T T^T||_F^2 / N.
    That is the reference code's normalisation (goel-shashank/CyCLIP, src/train.py `get_loss`:
    mean over the N x N squared differences of logit_scale-scaled logits, divided by
    logit_scale^2, times batch_size), so weights transfer from the paper (0.25 each); the scale
    cancels, so no temperature enters here. local_loss=True keeps only this rank's b rows and
    divides by b: the mean over ranks is the same loss, without building [N, N] matrices.
    Returns two scalars.
    """
    image_features, text_features = image_features.float(), text_features.float()
    all_images = gather_features(image_features, rank, world_size, with_grad=gather_with_grad)
    all_texts = gather_features(text_features, rank, world_size, with_grad=gather_with_grad)
    images, texts = (image_features, text_features) if local_loss else (all_images, all_texts)
    cross = (images @ all_texts.T - texts @ all_images.T).square().sum() / images.shape[0]
    inmodal = (images @ all_images.T - texts @ all_texts.T).square().sum() / images.shape[0]
    return cross, inmodal


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on masked positions. logits [B, L, V], labels [B, L] (-100 = not masked).

    Returns (loss, accuracy) as scalars; both are 0 when the batch has no masked token (an empty
    mean would be NaN and poison the step).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"mlm_labels: shape {tuple(labels.shape)} does not match mlm_logits {tuple(logits.shape)}")
    # ignore_index and a masked count instead of boolean indexing: no data-dependent shapes, so
    # nothing is read back from the device (the model already projects only masked rows).
    flat_logits, flat_labels = logits.flatten(0, 1).float(), labels.flatten()
    selected = flat_labels != IGNORE_INDEX
    count = selected.sum().clamp(min=1)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum") / count
    accuracy = ((flat_logits.argmax(dim=-1) == flat_labels) & selected).sum().float() / count
    return loss, accuracy.detach()


def compute_objective(
    outputs: dict,
    batch: dict,
    loss_cfg: LossConfig,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total = contrastive + mlm_weight * MLM + the CyCLIP terms' weights x terms, plus detached
    parts for logging.

    outputs: DualEncoder.forward dict; batch: loader dict ("mlm_labels" needed when MLM is on).
    parts: "contrastive", "mlm", "mlm_accuracy" (0 when MLM is off), "temperature" (clamped
    exp(logit_scale)), "cyclip_cross" / "cyclip_inmodal" when their weight is > 0 and, for
    SigLIP, "logit_bias".
    """
    image_features, text_features = outputs.get("image_features"), outputs.get("text_features")
    if image_features is None or text_features is None:
        raise ValueError("outputs: image_features and text_features are both needed for the loss; pass images and texts")
    logit_scale = outputs["logit_scale"]
    if loss_cfg.kind == "siglip":
        if outputs.get("logit_bias") is None:
            raise ValueError("outputs: logit_bias missing for kind=siglip; build the model with the same LossConfig")
        contrastive = siglip_loss(
            image_features, text_features, logit_scale, outputs["logit_bias"],
            rank=rank, world_size=world_size, max_logit_scale=loss_cfg.max_logit_scale,
            min_logit_scale=loss_cfg.min_logit_scale,
        )
    else:
        contrastive = clip_loss(
            image_features, text_features, logit_scale, rank=rank, world_size=world_size,
            local_loss=loss_cfg.local_loss, gather_with_grad=loss_cfg.gather_with_grad,
            max_logit_scale=loss_cfg.max_logit_scale, min_logit_scale=loss_cfg.min_logit_scale,
        )
    zero = contrastive.new_zeros(())
    mlm, mlm_accuracy = zero, zero
    total = contrastive
    if loss_cfg.mlm_enabled:
        if outputs.get("mlm_logits") is None or batch.get("mlm_labels") is None:
            raise ValueError("batch: mlm_weight > 0 needs mlm_input_ids/mlm_labels in the batch and mlm_logits in outputs")
        if outputs.get("mlm_targets") is not None:  # logits computed at masked positions only: [M, V]
            mlm, mlm_accuracy = mlm_loss(outputs["mlm_logits"][None], outputs["mlm_targets"][None])
        else:
            mlm, mlm_accuracy = mlm_loss(outputs["mlm_logits"], batch["mlm_labels"])
        total = contrastive + loss_cfg.mlm_weight * mlm
    total, cyclip_parts = _add_cyclip(total, image_features, text_features, loss_cfg, rank, world_size)
    parts = {
        "contrastive": contrastive.detach(),
        "mlm": mlm.detach(),
        "mlm_accuracy": mlm_accuracy.detach(),
        "temperature": logit_scale_value(logit_scale.detach(), loss_cfg.max_logit_scale,
                                         loss_cfg.min_logit_scale).reshape(()),
        **cyclip_parts,
    }
    if loss_cfg.kind == "siglip":
        parts["logit_bias"] = outputs["logit_bias"].detach().float().reshape(())
    return total, parts


def _add_cyclip(total: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor,
                loss_cfg: LossConfig, rank: int, world_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total + the enabled CyCLIP terms, and their detached values keyed by log name."""
    weights = {"cyclip_cross": loss_cfg.cyclip_cross_weight, "cyclip_inmodal": loss_cfg.cyclip_inmodal_weight}
    if not any(weights.values()):
        return total, {}  # off: no second gather, no [N, N] products, no log columns
    # SigLIP never all-gathers for its own loss; local rows keep CyCLIP at [b, N] there too.
    local = loss_cfg.local_loss or loss_cfg.kind == "siglip"
    terms = dict(zip(weights, cyclip_losses(image_features, text_features, rank=rank, world_size=world_size,
                                            local_loss=local, gather_with_grad=loss_cfg.gather_with_grad)))
    enabled = {name: terms[name] for name, weight in weights.items() if weight > 0}
    total = total + sum(weights[name] * term for name, term in enabled.items())
    return total, {name: term.detach() for name, term in enabled.items()}


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm gains and every other 1-D tensor (logit_scale/bias, class/mask embeddings),
    plus token/positional embedding tables: decaying them only shrinks lookup rows toward 0."""
    return param.ndim < 2 or name.endswith(".bias") or "embedding" in name or "logit_" in name or "cls_emb" in name


def _is_temperature(name: str) -> bool:
    return name.split(".")[-1] in ("logit_scale", "logit_bias")


def param_groups(model: nn.Module, weight_decay: float, logit_scale_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups over trainable parameters: [{"params", "weight_decay"[, "lr"]}, ...].

    With `logit_scale_lr`, logit_scale/bias get a last group of their own at that lr, no decay; the
    schedule (LambdaLR) scales each group's own initial lr, so its ratio to the base lr holds
    throughout warmup and cosine. Empty groups are dropped (DeepSpeed's ZeRO optimisers reject them).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
    decay, no_decay, temperature = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if logit_scale_lr is not None and _is_temperature(name):
            temperature.append(param)
        else:
            (no_decay if _is_no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": temperature, "weight_decay": 0.0, "lr": logit_scale_lr}]
    return [group for group in groups if group["params"]]


def log_temperature_init(cfg: LossConfig | str) -> tuple[float, float | None]:
    """(init raw logit_scale = log of the multiplier, init logit_bias) for a LossConfig (or a bare
    kind): its init_logit_scale / init_logit_bias, else CLIP log(1/0.07) and no bias, SigLIP log(10)
    and bias -10 (Zhai et al. 2023)."""
    cfg = LossConfig(kind=cfg) if isinstance(cfg, str) else cfg
    if cfg.kind == "siglip":
        bias = -10.0 if cfg.init_logit_bias is None else float(cfg.init_logit_bias)
        return math.log(cfg.init_logit_scale or 10.0), bias
    return math.log(cfg.init_logit_scale or 1 / 0.07), None
