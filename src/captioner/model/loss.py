"""Training loss: label-smoothed cross-entropy plus doubly stochastic attention (paper Eq. 14)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from captioner.errors import require
from captioner.model.decoder import DecoderOutput

ATT_REDUCTIONS = ("sum", "mean")


def caption_loss(
    output: DecoderOutput,
    captions: Tensor,
    smoothing: float = 0.0,
    att_gamma: float = 1.0,
    att_reduction: str = "mean",
    pad_id: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and detached parts {"xent", "att", "nll"} over the non-pad targets captions[:, 1:].

    att = mean over images of reduce_i (1 - sum_t alpha_ti)^2 over real (non-pad) steps; "sum" over
    locations i is the paper's Eq. 14, "mean" the seed's. "nll" is the unsmoothed cross-entropy.
    """
    require(0.0 <= smoothing < 1.0, f"smoothing={smoothing!r} must be in [0, 1)")
    require(att_gamma >= 0.0, f"att_gamma={att_gamma!r} must be >= 0 (0 turns the attention term off)")
    require(
        att_reduction in ATT_REDUCTIONS,
        f"att_reduction={att_reduction!r} is unknown; valid: {', '.join(ATT_REDUCTIONS)}",
    )
    targets = captions[:, 1:]
    logits = output.logits.reshape(-1, output.logits.shape[-1])
    flat = targets.reshape(-1)
    xent = F.cross_entropy(logits, flat, ignore_index=pad_id, label_smoothing=smoothing)
    nll = xent if smoothing == 0.0 else F.cross_entropy(logits.detach(), flat, ignore_index=pad_id)
    mask = (targets != pad_id).to(output.alphas.dtype).unsqueeze(-1)  # (B, T-1, 1)
    penalty = (1.0 - (output.alphas * mask).sum(dim=1)) ** 2  # (B, L)
    att = (penalty.sum(dim=1) if att_reduction == "sum" else penalty.mean(dim=1)).mean()
    total = xent + att_gamma * att
    return total, {"xent": xent.detach(), "att": att.detach(), "nll": nll.detach()}
