"""Batched beam search: every image's k beams in one loop over time, finished images leaving the batch.

Beam search ranks partial captions by summed log-probability (what greedy maximises, so k=1 is
greedy). The seed's rescoring options then choose the ``n_best`` among the k surviving beams::

    score = sum(log p) / length**length_norm + word_reward * length + sum(min(adaptive_reward, -log p))

``adaptive_reward`` is a bounded adaptive word reward: each word gets back its own cost (-log p),
but at most ``adaptive_reward`` nats. Confident words become free while uncertain ones still cost,
which counters beam search's bias to short captions without the unbounded growth a large constant
``word_reward`` invites: a word never earns more than it costs, so extending a caption never raises
its score.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from captioner.data.vocab import END_ID, PAD_ID, START_ID
from captioner.decode.common import banned_words, log_probs, prepare
from captioner.decode.config import DecodeConfig
from captioner.decode.hypotheses import Hypotheses, reorder
from captioner.errors import require
from captioner.model import fast_decode
from captioner.model.decoder import Decoder


def beam_search(
    decoder: Decoder,
    annotations: Tensor,
    k: int = 3,
    n_best: int = 1,
    max_len: int = 30,
    ban_unk: bool = False,
    length_norm: float = 0.0,
    word_reward: float = 0.0,
    adaptive_reward: float = 0.0,
    temperature: float = 1.0,
) -> Hypotheses:
    """Beam search over all images and beams at once ((B*k) decoder rows, one loop over time)."""
    DecodeConfig(
        method="beam",
        k=k,
        n_best=n_best,
        max_len=max_len,
        ban_unk=ban_unk,
        length_norm=length_norm,
        word_reward=word_reward,
        adaptive_reward=adaptive_reward,
        temperature=temperature,
    )
    vocab_size = decoder.vocab_size
    banned = banned_words(ban_unk)
    require(
        k <= vocab_size - len(banned),
        f"decode.k={k} exceeds the {vocab_size - len(banned)} words the decoder can emit; lower k",
    )
    return _beam_search(
        decoder,
        annotations,
        k,
        n_best,
        max_len,
        banned,
        temperature,
        length_norm,
        word_reward,
        adaptive_reward,
    )


@torch.inference_mode()
def _beam_search(
    decoder: Decoder,
    annotations: Tensor,
    k: int,
    n_best: int,
    max_len: int,
    banned: list[int],
    temperature: float,
    length_norm: float,
    word_reward: float,
    adaptive_reward: float,
) -> Hypotheses:
    batch, num_locations, _ = annotations.shape
    vocab_size = decoder.vocab_size
    # The first step has one beam per image (all k would be copies of it): one decoder row per image.
    projected, state = prepare(decoder, annotations, 1)
    step = decoder.step
    # k > 1: fold the context's projections per image, the same numbers in fewer FLOPs (fast_decode);
    # k=1 stays the greedy computation exactly.
    if k > 1 and fast_decode.can_fold(decoder, num_locations):
        projected = fast_decode.fold(decoder, annotations, projected)
        step = partial(fast_decode.folded_step, decoder)
    device, dtype = annotations.device, annotations.dtype
    # A finished beam has one continuation, <pad> at no cost: its score is frozen and it is not expanded.
    frozen = torch.full((vocab_size,), -math.inf, dtype=dtype, device=device)
    frozen[PAD_ID] = 0.0
    # Images whose k beams have all finished leave the live batch (``live`` maps live rows to images),
    # so the decoder rows shrink as captions end. Their later history is the finished beam's own:
    # <pad> at log p 0 with itself as parent, which these defaults give.
    live = torch.arange(batch, device=device)
    pad_words = torch.full((batch, k), PAD_ID, dtype=torch.long, device=device)
    self_parent = torch.arange(k, device=device).expand(batch, k)
    no_logp = torch.zeros(batch, k, dtype=dtype, device=device)
    no_alpha = torch.zeros(batch, k, num_locations, dtype=dtype, device=device)
    final_scores = torch.empty(batch, k, dtype=dtype, device=device)
    scores = torch.zeros(batch, 1, dtype=dtype, device=device)  # (live images, beams so far)
    finished = torch.zeros(batch, 1, dtype=torch.bool, device=device)
    words = torch.full((batch,), START_ID, dtype=torch.long, device=device)
    history: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # per step: word, parent, log p, alpha
    for _ in range(max_len):
        n_live, beams = scores.shape
        # Beams share an image: the attention's faster Eq. 4; the first step's one row per image does not.
        logits, alpha, state = step(words, state, annotations, projected, fast=beams > 1)
        logp = log_probs(logits, temperature, banned).view(n_live, beams, vocab_size)
        if bool(finished.any()):
            logp = torch.where(finished[..., None], frozen, logp)
        # topk over the beams*V candidates of each image (the seed's flattened topk, // and %).
        scores, flat = (scores[..., None] + logp).view(n_live, beams * vocab_size).topk(k, dim=1)
        parent, word = flat // vocab_size, flat % vocab_size
        word_logp = logp.view(n_live, beams * vocab_size).gather(1, flat)
        word_alpha = alpha.view(n_live, beams, num_locations).gather(
            1, parent[..., None].expand(-1, -1, num_locations)
        )
        was_finished = finished.gather(1, parent)
        word_alpha = word_alpha.masked_fill(was_finished[..., None], 0.0)
        finished = was_finished | (word == END_ID)
        if n_live == batch:
            history.append((word, parent, word_logp, word_alpha))
        else:
            history.append(
                (
                    pad_words.index_put((live,), word),
                    self_parent.index_put((live,), parent),
                    no_logp.index_put((live,), word_logp),
                    no_alpha.index_put((live,), word_alpha),
                )
            )
        # Decoder rows of the next step: each surviving beam's parent row, for the images still live.
        rows = torch.arange(n_live, device=device)[:, None] * beams + parent
        done = finished.all(dim=1)
        if bool(done.any()):
            final_scores[live[done]] = scores[done]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            live, scores, finished, word, rows = (
                live[keep],
                scores[keep],
                finished[keep],
                word[keep],
                rows[keep],
            )
            annotations, projected = annotations[keep], projected[keep]
        state = state.select(rows.view(-1))
        words = word.view(-1)
    else:
        final_scores[live] = scores

    # Backtrack every surviving beam through the parent pointers.
    beam = torch.arange(k, device=device).expand(batch, k)
    tokens, word_log_probs, alphas = [], [], []
    for word, parent, word_logp, word_alpha in reversed(history):
        tokens.append(word.gather(1, beam))
        word_log_probs.append(word_logp.gather(1, beam))
        alphas.append(word_alpha.gather(1, beam[..., None].expand(-1, -1, num_locations)))
        beam = parent.gather(1, beam)
    tokens_t = torch.stack(tokens[::-1], 2)
    log_probs_t = torch.stack(word_log_probs[::-1], 2)
    alphas_t = torch.stack(alphas[::-1], 2)
    lengths = (tokens_t != PAD_ID).sum(-1)

    rescored = final_scores / lengths.to(dtype) ** length_norm + word_reward * lengths
    if adaptive_reward > 0:
        rescored = rescored + (-log_probs_t).clamp(max=adaptive_reward).sum(-1)
    # Beams arrive sorted by summed log-prob; a stable sort keeps that order among rescoring ties.
    order = rescored.argsort(dim=1, descending=True, stable=True)[:, :n_best]
    return reorder(Hypotheses(tokens_t, rescored, log_probs_t, alphas_t, lengths), order)
