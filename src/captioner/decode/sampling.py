"""Greedy and sampled decoding: n independent rows per image, each choosing its own next word."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from captioner.data.vocab import END_ID, PAD_ID, START_ID
from captioner.decode.common import banned_words, log_probs, prepare
from captioner.decode.config import DecodeConfig
from captioner.decode.hypotheses import Hypotheses, reorder
from captioner.model.decoder import Decoder


def greedy(
    decoder: Decoder,
    annotations: Tensor,
    max_len: int = 30,
    ban_unk: bool = False,
    temperature: float = 1.0,
) -> Hypotheses:
    """The most likely word at every step (n=1); score = summed log-probability."""
    DecodeConfig(method="greedy", max_len=max_len, ban_unk=ban_unk, temperature=temperature)
    return rollout(decoder, annotations, 1, max_len, ban_unk, temperature, lambda logp: logp.argmax(-1))


def sample(
    decoder: Decoder,
    annotations: Tensor,
    n: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_len: int = 30,
    ban_unk: bool = False,
    generator: torch.Generator | None = None,
) -> Hypotheses:
    """n captions per image drawn word by word, optionally from the top-k / nucleus (top-p) words."""
    DecodeConfig(
        method="sample", n_best=n, temperature=temperature, top_k=top_k, top_p=top_p, max_len=max_len
    )

    def draw(logp: Tensor) -> Tensor:
        logp = top_k_top_p(logp, top_k, top_p)
        return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)

    return rollout(decoder, annotations, n, max_len, ban_unk, temperature, draw)


def top_k_top_p(logp: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set to -inf every word outside the top-k and outside the nucleus (smallest set with mass >= p)."""
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_logp.exp()
        mass_before = probs.cumsum(-1) - probs  # the most likely word has 0 mass before it: always kept
        # Mass is relative to the words still allowed (bans and top-k removed some).
        drop_sorted = mass_before >= top_p * probs.sum(-1, keepdim=True)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, -math.inf)
    return logp


@torch.inference_mode()
def rollout(
    decoder: Decoder,
    annotations: Tensor,
    n: int,
    max_len: int,
    ban_unk: bool,
    temperature: float,
    choose: Callable[[Tensor], Tensor],
) -> Hypotheses:
    """Decode B*n independent rows, ``choose`` picking each next word from the log-probs."""
    projected, state = prepare(decoder, annotations, n)
    banned = banned_words(ban_unk)
    rows = annotations.shape[0] * n
    words = torch.full((rows,), START_ID, dtype=torch.long, device=annotations.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=annotations.device)
    tokens, word_log_probs, alphas = [], [], []
    for _ in range(max_len):
        # n > 1 rows share an image: the attention's faster Eq. 4; one row decodes as training computes.
        logits, alpha, state = decoder.step(words, state, annotations, projected, fast=n > 1)
        logp = log_probs(logits, temperature, banned)
        words = choose(logp).masked_fill(finished, PAD_ID)
        tokens.append(words)
        word_log_probs.append(logp.gather(1, words[:, None]).squeeze(1).masked_fill(finished, 0.0))
        alphas.append(alpha.masked_fill(finished[:, None], 0.0))
        finished = finished | (words == END_ID)
        if bool(finished.all()):
            break
    batch = annotations.shape[0]
    tokens_t = torch.stack(tokens, 1).view(batch, n, -1)
    log_probs_t = torch.stack(word_log_probs, 1).view(batch, n, -1)
    alphas_t = torch.stack(alphas, 1).view(batch, n, len(tokens), -1)
    scores = log_probs_t.sum(-1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return reorder(Hypotheses(tokens_t, scores, log_probs_t, alphas_t, (tokens_t != PAD_ID).sum(-1)), order)
