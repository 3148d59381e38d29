"""SCST's rollouts on the training fast path: sampled captions with gradients and the greedy baseline, each
step one compiled call built on the fast path's ``cell`` (``captioner.model.fast_train``).

The same numbers as the eager rollouts (``policy.sample_with_grad``, ``sampling.greedy``) up to rounding,
run differently:

- every row stays in the batch to ``max_len`` or until all rows ended (fixed shapes: one compiled graph,
  a CUDA graph on CUDA); a finished row's word is ``<pad>``, its log-probability 0 (no gradient);
- random numbers are drawn outside the compiled step, in the eager sampler's order (inductor's generator
  is not eager's): the deep output's dropout mask, then ``torch.multinomial``'s own Exp(1) noise q, the
  word being argmax p / q.

Reading a device value (are all rows done? which rows still sample?) is a host sync on an accelerator and
costs nothing on the CPU. With ``host_reads`` (the default on the CPU) the loop reads them every step:
only the unfinished rows draw, in row order, exactly as the eager sampler's shrinking batch draws (the
same captions for the same seed), and it stops when the last row ends. Without (the default elsewhere)
every row draws every step, the same distribution with other numbers, and the loop asks whether all
rows ended only every ``CHECK_EVERY`` steps, so the device runs ahead of the host in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from captioner.data.vocab import END_ID, PAD_ID, START_ID
from captioner.decode.common import banned_words, check_annotations
from captioner.decode.config import DecodeConfig
from captioner.decode.policy import Rollout
from captioner.errors import require
from captioner.model.decoder import Decoder
from captioner.model.fast_train import cell, check_fusable, fixed_context, lstm_weights, prepare

# Without host reads, how often the loop syncs to ask whether every row has ended: a check stalls the
# host until the device catches up; a step past the last <end> is wasted work (at most CHECK_EVERY - 1).
# On 2 CPU cores 1, 4 and never (max_len) timed alike (2026-12, 40-320 rows): a check costs nothing
# there, and the longest of SCST's many samples nearly always reaches max_len anyway. 4 bounds both
# costs on a GPU until a GPU run measures them.
CHECK_EVERY = 4

Step = Callable[..., tuple]


def policy_step(
    d: Decoder,
    h: Tensor,
    c: Tensor,
    coverage: Tensor | None,
    words: Tensor,
    finished: Tensor,
    annotations: Tensor,
    projected: Tensor,
    context: Tensor | None,
    packed: tuple,
    banned: Tensor,
    temperature: float,
    mask: Tensor | None,
    noise: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None, Tensor]:
    """One step of every row: (h, c, coverage, previous words (R,), finished (R,)) -> (h_t, c_t, coverage_t,
    next words (``<pad>`` where finished), their log p and the entropy (0 where finished), finished after).

    ``packed``: ``prepare``'s weights, sizes, [W_y; W_ie] and deep output's biases; ``mask``: the deep
    output's dropout mask (None: none); ``noise`` (R, V): Exp(1) draws, the word is argmax p / noise
    (``torch.multinomial(p, 1)``'s own rule); None: greedy, no log p or entropy.
    """
    weights, sizes, w_e, out_bias = packed
    emb = d.embed(words)  # E y_{t-1}
    emb_out = emb[..., :0] if out_bias is None else emb + out_bias
    h, c, coverage, _, part = cell(
        h, c, coverage, emb @ w_e.t(), emb_out, annotations, projected, context, weights, sizes
    )
    out = torch.addmm(part, h, d.L_h.weight.t()) if d.deep_output else h  # Eq. 7's L_o input
    if mask is not None:
        out = out * mask
    # The policy's distribution: banned words out before the softmax, as sample_with_grad's.
    logp = torch.log_softmax((d.L_o(out) / temperature).index_fill(-1, banned, -math.inf), dim=-1)
    if noise is None:
        words = logp.argmax(-1).masked_fill(finished, PAD_ID)
        return h, c, coverage, words, None, None, finished | (words == END_ID)
    p = logp.detach().exp()
    drawn = (p / noise).argmax(-1)
    word_logp = logp.gather(1, drawn[:, None]).squeeze(1).masked_fill(finished, 0.0)
    entropy = -(p * logp.detach().masked_fill(p == 0, 0.0)).sum(-1)
    words = drawn.masked_fill(finished, PAD_ID)
    return h, c, coverage, words, word_logp, entropy.masked_fill(finished, 0.0), finished | (words == END_ID)


def draw(d: Decoder, finished: Tensor, host_reads: bool) -> tuple[Tensor, Tensor]:
    """The step's dropout mask (R, L_o's input) and Exp(1) noise (R, V), drawn in the eager sampler's order.

    ``host_reads``: only the unfinished rows draw, in row order, and the finished rows get ones; else
    every row draws. The mask comes from the decoder's own Dropout (ones in eval mode or at p=0).
    """
    like, width = d.L_o.weight, (d.L_o.in_features, d.vocab_size)
    rows = finished.shape[0]
    if not host_reads:
        return d.dropout(like.new_ones(rows, width[0])), like.new_empty(rows, width[1]).exponential_()
    drawing = (~finished).nonzero().squeeze(1)  # the rows the eager sampler still holds
    mask = d.dropout(like.new_ones(len(drawing), width[0]))
    noise = like.new_empty(len(drawing), width[1]).exponential_()
    return (
        like.new_ones(rows, width[0]).index_copy(0, drawing, mask),
        like.new_ones(rows, width[1]).index_copy(0, drawing, noise),
    )


def _roll(
    d: Decoder,
    annotations: Tensor,
    n: int,
    max_len: int,
    temperature: float,
    sample: bool,
    step: Step,
    prologue: Step,
    host_reads: bool | None,
) -> list[tuple]:
    """Each step's (words, log p, entropy, finished before it) for B*n rows, n consecutive rows per image."""
    check_annotations(d, annotations)
    check_fusable(d)
    if host_reads is None:
        host_reads = annotations.device.type == "cpu"
    weights, sizes, w_e, out_bias, projected, state = prologue(d, lstm_weights(d), annotations)
    packed = (weights, sizes, w_e, out_bias)
    if n > 1:  # one row per sample, as sample_with_grad's
        annotations, projected = annotations.repeat_interleave(n, 0), projected.repeat_interleave(n, 0)
        state = state.repeat(n)
    h, c = state.h[0], state.c[0]
    coverage = None if state.coverage is None else state.coverage[0]
    if coverage is not None and torch.is_grad_enabled():  # as in teacher_forced: one compiled graph
        coverage.requires_grad_()
    context = fixed_context(d, annotations)
    rows, device = annotations.shape[0], annotations.device
    banned = torch.tensor(banned_words(False), device=device)
    words = torch.full((rows,), START_ID, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    steps = []
    for t in range(max_len):
        if t and (host_reads or t % CHECK_EVERY == 0) and bool(finished.all()):
            break
        mask, noise = draw(d, finished, host_reads) if sample else (None, None)
        h, c, coverage, words, word_logp, entropy, now_finished = step(
            d, h, c, coverage, words, finished, annotations, projected, context, packed, banned,
            temperature, mask, noise,
        )  # fmt: skip
        steps.append((words, word_logp, entropy, finished))
        finished = now_finished
    return steps


def sample_fused(
    decoder: Decoder,
    annotations: Tensor,
    n: int = 1,
    max_len: int = 30,
    temperature: float = 1.0,
    step: Step = policy_step,
    prologue: Step = prepare,
    host_reads: bool | None = None,
) -> Rollout:
    """``policy.sample_with_grad(decoder, annotations, n, max_len, temperature)`` through ``prologue`` and
    ``step`` (``prepare`` and ``policy_step``, or their compiled forms: ``fast_train.compile_pass(device,
    policy_step)``). ``host_reads``: see the module's docstring (None: on the CPU only)."""
    DecodeConfig(method="sample", n_best=n, temperature=temperature, max_len=max_len)
    steps = _roll(decoder, annotations, n, max_len, temperature, True, step, prologue, host_reads)
    words, log_probs, entropy, finished = (
        torch.stack(x, 1).view(annotations.shape[0], n, -1) for x in zip(*steps)
    )
    return Rollout(words, log_probs, ~finished, entropy)


@torch.no_grad()
def greedy_fused(
    decoder: Decoder,
    annotations: Tensor,
    max_len: int = 30,
    step: Step = policy_step,
    prologue: Step = prepare,
    host_reads: bool | None = None,
) -> Tensor:
    """``sampling.greedy(decoder, annotations, max_len).tokens[:, 0]``, (B, T), in eval mode (SCST's
    baseline), through ``prologue`` and ``step`` as ``sample_fused``'s."""
    DecodeConfig(method="greedy", max_len=max_len)
    require(not decoder.training, "greedy_fused decodes at test time: call decoder.eval() first")
    steps = _roll(decoder, annotations, 1, max_len, 1.0, False, step, prologue, host_reads)
    return torch.stack([s[0] for s in steps], 1)
