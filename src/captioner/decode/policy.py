"""Sampled captions whose log-probabilities keep their graph: the policy of REINFORCE training (SCST)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.data.vocab import END_ID, PAD_ID, START_ID
from captioner.decode.common import banned_words, prepare
from captioner.decode.config import DecodeConfig
from captioner.model.decoder import Decoder


@dataclass
class Rollout:
    """Sampled captions whose log-probabilities carry gradients (policy-gradient training, e.g. SCST).

    tokens (B, n, T) as in ``Hypotheses``; log_probs (B, n, T): log p(w_t) of each sampled word, plus
    log p(s_t) of each sampled location with hard attention, 0 at padding; mask (B, n, T): the real
    tokens (``<end>`` included); entropy (B, n, T): the word distribution's entropy (detached, for logs).
    """

    tokens: Tensor
    log_probs: Tensor
    mask: Tensor
    entropy: Tensor


def sample_with_grad(
    decoder: Decoder, annotations: Tensor, n: int = 1, max_len: int = 30, temperature: float = 1.0
) -> Rollout:
    """n captions per image sampled in the decoder's current mode (train: dropout, hard locations sampled),
    keeping the graph, so ``-(reward * log_probs).sum()`` is the REINFORCE loss (Williams 1992).

    A sample that has drawn ``<end>`` leaves the computation (its rows are dropped from the state), so
    the steps and the backward pass cost the samples' own lengths, not the batch's longest one each.
    """
    DecodeConfig(method="sample", n_best=n, temperature=temperature, max_len=max_len)
    projected, state = prepare(decoder, annotations, n)
    batch, device = annotations.shape[0], annotations.device
    # One row per sample (the n copies of an image no longer consecutive once rows drop out).
    annotations, projected = annotations.repeat_interleave(n, 0), projected.repeat_interleave(n, 0)
    banned = torch.tensor(banned_words(False), device=device)
    rows = batch * n
    active = torch.arange(rows, device=device)  # the rows still sampling, in row order
    words = torch.full((rows,), START_ID, dtype=torch.long, device=device)
    tokens, log_probs, masks, entropies = [], [], [], []
    for _ in range(max_len):
        logits, _, state, locations = decoder.step_locations(words, state, annotations, projected)
        # The policy is the distribution the words are drawn from: banned words masked out of place
        # (autograd needs log_softmax's output unchanged), the rest renormalised.
        logp = torch.log_softmax((logits / temperature).index_fill(-1, banned, -math.inf), dim=-1)
        words = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        word_logp = logp.gather(1, words[:, None]).squeeze(1)
        if locations is not None:  # the location is part of the sampled action (hard attention)
            word_logp = word_logp + locations.log_prob
        p = logp.detach().exp()
        entropy = -(p * logp.detach().masked_fill(p == 0, 0.0)).sum(-1)
        # Back to all rows: finished ones hold <pad>, log p 0 (no gradient), mask False.
        tokens.append(words.new_full((rows,), PAD_ID).index_copy(0, active, words))
        log_probs.append(word_logp.new_zeros(rows).index_copy(0, active, word_logp))
        masks.append(torch.zeros(rows, dtype=torch.bool, device=device).index_fill(0, active, True))
        entropies.append(entropy.new_zeros(rows).index_copy(0, active, entropy))
        going = words != END_ID
        if not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            active, words, state = active[keep], words[keep], state.select(keep)
            annotations, projected = annotations[keep], projected[keep]

    def stack(x: list[Tensor]) -> Tensor:
        return torch.stack(x, 1).view(batch, n, -1)

    return Rollout(stack(tokens), stack(log_probs), stack(masks), stack(entropies))
