"""Temperature scaling of next-word logits (Guo et al. 2017), fitted on validation data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.errors import DataError, require


def fit_temperature(logits: Tensor, targets: Tensor, pad_id: int = 0, max_iter: int = 100) -> float:
    """T minimising the NLL of logits / T over non-pad targets; logits (..., V), targets (...)."""
    logits = logits.detach().reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    keep = targets != pad_id
    require(
        bool(keep.any()), "fit_temperature got no non-pad targets; give it validation captions", DataError
    )
    logits, targets = logits[keep], targets[keep]
    # Optimise log T so T stays positive without constraints.
    log_t = torch.zeros(1, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_nll(logits: Tensor, targets: Tensor, temperature: float = 1.0, pad_id: int = 0) -> float:
    """Mean NLL of logits / temperature over non-pad targets (to report calibration before/after)."""
    flat = logits.detach().reshape(-1, logits.shape[-1]).float() / temperature
    return float(F.cross_entropy(flat, targets.reshape(-1), ignore_index=pad_id))
