"""Optimisers with encoder/decoder/embedding LR groups, and gradient clipping (LR schedules: ``schedulers``)."""

from collections.abc import Iterable

import torch
from torch import nn

from captioner.errors import require

OPTIMIZERS = ("sgd", "adam", "adamw")
CLIP_MODES = ("none", "norm", "value")

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _split_decay(named: list[tuple[str, nn.Parameter]], no_decay_ids: set[int]) -> tuple[list, list]:
    """(decayed, not decayed) parameters: biases and norm scales/shifts (all 1-D or in norm layers) skip decay."""
    decay = [p for _, p in named if p.ndim >= 2 and id(p) not in no_decay_ids]
    no_decay = [p for _, p in named if p.ndim < 2 or id(p) in no_decay_ids]
    return decay, no_decay


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    encoder_lr: float = 1e-5,
    decoder_lr: float = 2e-3,
    embedding_lr: float | None = None,
    weight_decay: float = 1e-2,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Optimiser with named groups encoder, encoder_no_decay, decoder, decoder_no_decay, embedding.

    ``model.encoder`` (may be None) parameters go to the encoder groups, ``model.decoder.embedding.weight``
    to the embedding group (``embedding_lr=None`` means ``decoder_lr``), every other parameter to the
    decoder groups. Biases, norm layers and the embedding get no weight decay. A weight tied to the
    embedding is the same tensor and is counted once. Frozen encoder parameters (requires_grad False) are
    included too: they have no gradient so the optimiser skips them, and unfreezing them later
    (``finetune_start_step``) trains them without rebuilding the optimiser. ``momentum`` is read by sgd
    only, ``betas`` by adam/adamw only. Empty groups are left out.
    """
    require(name in OPTIMIZERS, f"optimizer.name={name!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
    if embedding_lr is None:
        embedding_lr = decoder_lr
    for key, lr in (("encoder_lr", encoder_lr), ("decoder_lr", decoder_lr), ("embedding_lr", embedding_lr)):
        require(lr >= 0, f"optimizer.{key}={lr} must be >= 0; use e.g. optimizer.{key}=1e-3")
    require(weight_decay >= 0, f"optimizer.weight_decay={weight_decay} must be >= 0; use e.g. 0.01")
    require(0 <= momentum < 1, f"optimizer.momentum={momentum} must be in [0, 1); use e.g. 0.9")
    betas = tuple(float(b) for b in betas)
    require(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        f"optimizer.betas={list(betas)} must be two numbers in [0, 1); use e.g. [0.9, 0.999]",
    )

    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    embedding = model.decoder.embedding.weight
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_LAYERS) for p in m.parameters()}

    # named_parameters() yields each tensor once, so a tied output weight appears only as the embedding.
    named = list(model.named_parameters())
    enc = [(n, p) for n, p in named if id(p) in encoder_ids]
    dec = [(n, p) for n, p in named if id(p) not in encoder_ids and p is not embedding]
    enc_decay, enc_no_decay = _split_decay(enc, no_decay_ids)
    dec_decay, dec_no_decay = _split_decay(dec, no_decay_ids)
    groups = [
        {"name": "encoder", "params": enc_decay, "lr": encoder_lr, "weight_decay": weight_decay},
        {"name": "encoder_no_decay", "params": enc_no_decay, "lr": encoder_lr, "weight_decay": 0.0},
        {"name": "decoder", "params": dec_decay, "lr": decoder_lr, "weight_decay": weight_decay},
        {"name": "decoder_no_decay", "params": dec_no_decay, "lr": decoder_lr, "weight_decay": 0.0},
        {"name": "embedding", "params": [embedding], "lr": embedding_lr, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=decoder_lr, momentum=momentum)
    if name == "adam":
        # torch's Adam adds weight_decay as an L2 term to the gradient (coupled); adamw decouples it.
        return torch.optim.Adam(groups, lr=decoder_lr, betas=betas)
    return torch.optim.AdamW(groups, lr=decoder_lr, betas=betas)


def clip_gradients(params: Iterable[torch.Tensor], mode: str, value: float) -> torch.Tensor | None:
    """Clip gradients in place by total norm or by value; return the total grad norm before clipping.

    Returns None for mode "none" (no extra pass over the gradients). The norm stays a tensor on the
    gradients' device: the loop reads it (a host sync) only at log steps. Under AMP, unscale the
    gradients (``scaler.unscale_(optimizer)``) before calling this.
    """
    require(mode in CLIP_MODES, f"trainer.grad_clip={mode!r} is unknown; use one of {', '.join(CLIP_MODES)}")
    require(value > 0, f"trainer.clip_value={value} must be > 0; use e.g. 5.0")
    if mode == "none":
        return None
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if mode == "norm":
        return torch.nn.utils.clip_grad_norm_(params, value)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    torch.nn.utils.clip_grad_value_(params, value)
    return norm
