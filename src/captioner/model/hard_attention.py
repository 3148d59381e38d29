"""Stochastic "hard" attention (paper Sec. 4.1): one location per step, trained by its variational bound.

The decoder still computes alpha with the soft attention's f_att; hard attention then looks at one
location s_t ~ Multinoulli(alpha_t) and z_t = a_{s_t}. Training maximises the lower bound L_s on
log p(y|a) with the paper's estimator (Eq. 11-12)::

    dL_s/dW ~ dlog p(y|s,a)/dW + lambda_r (log p(y|s,a) - b) dlog p(s|a)/dW + lambda_e dH[s]/dW

with the moving-average baseline b_k = 0.9 b_{k-1} + 0.1 log p(y|s_k,a). Like arctic-captions
(``semi_sampling_p``), a whole minibatch uses the expected context (soft attention) instead of the
sample with probability ``expected_prob`` (the paper's 0.5). At inference the location is the argmax
of alpha or the context is the expectation (soft), ``Decoder(hard_inference=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.errors import require

HOW = ("sample", "argmax", "expectation")
# log 0 would make H[s] and log p(s) NaN where alpha underflows; a location with alpha below this is
# never sampled, so clamping changes no gradient that matters.
_TINY = 1e-12


@dataclass
class Locations:
    """One step of hard attention: log p(s_t|a) of the chosen location (B*n,) and H[alpha_t] (B*n,)."""

    log_prob: Tensor
    entropy: Tensor


def select_locations(alpha: Tensor, how: str) -> tuple[Tensor, Locations]:
    """One-hot weights (rows, L) at a location drawn from alpha (``sample``) or its mode (``argmax``).

    Draws from torch's global RNG (seeded by the run, saved in checkpoints) so runs and resumes repeat.
    """
    require(how in ("sample", "argmax"), f"select_locations how={how!r}: use sample or argmax")
    if how == "sample":
        chosen = torch.multinomial(alpha.detach().float(), 1)
    else:
        chosen = alpha.argmax(dim=-1, keepdim=True)
    weights = torch.zeros_like(alpha).scatter_(1, chosen, 1.0)
    log_alpha = alpha.clamp_min(_TINY).log()
    entropy = -(alpha * log_alpha).sum(dim=-1)
    return weights, Locations(log_alpha.gather(1, chosen).squeeze(1), entropy)


def location_loss(
    logits: Tensor,
    captions: Tensor,
    location_log_probs: Tensor,
    location_entropy: Tensor,
    baseline: Tensor,
    reinforce: float = 1.0,
    entropy: float = 0.002,
    decay: float = 0.9,
    pad_id: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The REINFORCE and entropy terms of L_s (to add to the word cross-entropy) and their parts.

    ``logits`` (B,T-1,V) predict captions[:, 1:]; ``location_*`` are (B,T-1). The reward of a caption
    is log p(y|s,a), its summed word log-likelihood. ``baseline`` is a (2,) buffer [b, updates],
    updated in place (b starts at the first batch's mean reward rather than 0, so the first steps are
    not pushed by an arbitrary offset). Terms are per target token, like the cross-entropy.
    """
    targets = captions[:, 1:]
    mask = (targets != pad_id).to(logits.dtype)
    token_nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=pad_id, reduction="none")
    reward = -(token_nll.detach() * mask).sum(dim=1)  # log p(y|s,a) per caption
    with torch.no_grad():
        b = torch.where(baseline[1] > 0, baseline[0], reward.mean())
        baseline.copy_(torch.stack([decay * b + (1 - decay) * reward.mean(), baseline[1] + 1]))
    n_tokens = mask.sum().clamp_min(1.0)
    advantage = reward - b
    # Minimising -lambda_r (log p(y|s,a) - b) log p(s|a) follows the bound's gradient for the locations.
    # Written as log p - log p.detach(): the same gradient, but the value is 0, so the logged loss
    # stays the cross-entropy (minus the entropy bonus) rather than an arbitrary surrogate.
    log_p = (location_log_probs * mask).sum(dim=1)
    reinforce_term = -(advantage * (log_p - log_p.detach())).sum() / n_tokens
    entropy_term = (location_entropy * mask).sum() / n_tokens
    total = reinforce * reinforce_term - entropy * entropy_term
    parts = {
        "location_reward": reward.mean(),
        "location_baseline": b.detach(),
        "location_entropy": entropy_term.detach(),
    }
    return total, parts
