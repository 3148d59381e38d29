"""Faster, numerically equivalent forms of the decoder step for several rows per image (beams, samples).

``Decoder`` and ``SoftAttention`` read as the paper's equations; this module holds the tricks that only
pay when one image feeds many decoder rows, and gives the same numbers up to rounding:

- ``grouped_attention``: the n rows of an image broadcast against its annotations (never copied) and
  Eq. 4's tanh computed through a sigmoid, a few images at a time through one reused buffer;
- ``project``/``folded_step`` (inference only): W z_t for the LSTM and the deep output formed as
  sum_i alpha_ti (W a_i) from per-image projections, and the LSTM cell written out around it.

The decoder dispatches here by itself: ``Decoder.step`` takes a ``Folded`` projection where it takes
W_a a, and ``SoftAttention`` hands grouped rows to ``grouped_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from captioner.model.state import DecoderState, group_size

if TYPE_CHECKING:
    from captioner.model.attention import SoftAttention
    from captioner.model.decoder import Decoder
    from captioner.model.hard_attention import Locations

# Values per temporary in grouped attention (4 MB of float32): well inside L3, under malloc's mmap threshold.
_CHUNK_VALUES = 1 << 20


def grouped_attention(
    attention: SoftAttention,
    annotations: Tensor,
    projected: Tensor,
    hidden: Tensor,
    word: Tensor | None,
    coverage: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``SoftAttention.forward`` for n > 1 hidden rows per image: context (B*n,D), alpha (B*n,L).

    The n hidden rows of one image (its beams or samples, consecutive) share that image's
    annotations: they are broadcast, never copied, so a batch of beams reads each image once.
    """
    batch, rows = annotations.shape[0], hidden.shape[0]
    n = group_size(rows, batch)
    query = attention.query(hidden, word).view(batch, n, 1, -1)
    # Eq. 4 via tanh(x) = 2 sigmoid(2x) - 1: w.tanh(u) + b = 2w.sigmoid(2u) - sum(w) + b, and the
    # softmax ignores that constant, so alpha is the same up to rounding (~1e-6 relative). Why:
    # torch's CPU tanh costs ~3.5 ns per value vs ~0.4 for sigmoid (2-core EPYC, torch 2.14),
    # and this op runs over B*n*L*A values every step (a quarter of batched beam time with tanh).
    # 2P + 2q is exactly 2(P + q) in floating point; (B,1,L,A) + (B,n,1,A) broadcasts, no copies.
    # A few images at a time through one reused buffer: the (c,n,L,A) temporary stays in cache,
    # where a fresh B*n*L*A tensor every step cost more in page faults than the add itself.
    query2, projected2, weight2 = query * 2, projected.unsqueeze(1), 2 * attention.score.weight[0]
    if coverage is not None:
        coverage2 = coverage.view(batch, n, -1, 1) * 2
    if torch.is_grad_enabled():  # autograd allows neither out= nor overwriting a saved tensor
        pre2 = torch.add(query2, projected2, alpha=2)
        if coverage is not None:
            pre2 = pre2 + coverage2 * attention.coverage_weight
        energy = torch.sigmoid(pre2) @ weight2
    else:
        chunk = min(batch, max(1, _CHUNK_VALUES // (n * projected.shape[1] * projected.shape[2])))
        buffer = projected.new_empty(chunk, n, *projected.shape[1:])
        energies = []
        for i in range(0, batch, chunk):
            gate = torch.add(
                query2[i : i + chunk], projected2[i : i + chunk], alpha=2, out=buffer[: batch - i]
            )
            if coverage is not None:
                gate.addcmul_(coverage2[i : i + chunk], attention.coverage_weight)
            energies.append(gate.sigmoid_() @ weight2)
        energy = torch.cat(energies)  # (B,n,L)
    alpha = energy.softmax(dim=-1)
    context = torch.bmm(alpha, annotations)  # (B,n,D)
    return context.view(rows, -1), alpha.view(rows, -1)


@dataclass(frozen=True)
class Folded:
    """Per-image projections for ``folded_step``: W_a a (B,L,A) and W a (B,L,4H[+E]), the context's
    columns of the LSTM's W_ih (and L_z with deep output) applied to every annotation.

    Both live in one flat row per image, (B, L*A + L*(4H[+E])): each is a (B,L,·) view with contiguous
    rows, so attention and bmm read them in place (a (B,L,A+...) concat would be strided), and beam
    search drops finished images with one index (``folded[keep]``), as it does a plain projection.
    """

    flat: Tensor
    num_locations: int
    attention_dim: int

    @property
    def projected(self) -> Tensor:
        """W_a a, (B,L,A): what the attention reads."""
        split = self.num_locations * self.attention_dim
        return self.flat[:, :split].view(self.flat.shape[0], self.num_locations, -1)

    @property
    def per_location(self) -> Tensor:
        """W a, (B,L,4H[+E]): the context's LSTM-gate and deep-output terms per location."""
        split = self.num_locations * self.attention_dim
        return self.flat[:, split:].view(self.flat.shape[0], self.num_locations, -1)

    def __getitem__(self, index: Tensor) -> Folded:
        """The images ``index`` selects, like indexing a (B,L,A) projection."""
        return Folded(self.flat[index], self.num_locations, self.attention_dim)

    def __len__(self) -> int:
        return self.flat.shape[0]


def can_fold(decoder: Decoder, num_locations: int) -> bool:
    """Whether ``project`` folds: soft attention, one LSTM layer, no per-channel gate (a scalar gate
    commutes with the sum, a channel gate does not), fewer locations than channels, and inference."""
    return (
        decoder.context == "soft"
        and decoder.num_layers == 1
        and decoder.beta_gate != "channel"
        and num_locations < decoder.encoder_dim
        and not torch.is_grad_enabled()
        and not decoder.training  # the written-out step has no dropout
    )


def project(decoder: Decoder, annotations: Tensor) -> Tensor | Folded:
    """``decoder.project(annotations)``, folded with the context's weights when that is cheaper.

    For beams (many rows per image): ``folded_step`` then forms W z_t as sum_i alpha_ti (W a_i), the
    same value by linearity, in L instead of D multiply-adds per output.
    """
    projected = decoder.project(annotations)
    if not can_fold(decoder, annotations.shape[1]):
        return projected
    w_z = decoder.lstm.weight_ih_l0[:, decoder.embed_dim :]  # the context's columns of W_ih
    weights = torch.cat([w_z, decoder.L_z.weight]) if decoder.deep_output else w_z
    flat = torch.cat([projected.flatten(1), (annotations @ weights.T).flatten(1)], dim=1)
    return Folded(flat, annotations.shape[1], projected.shape[2])


def folded_step(
    decoder: Decoder,
    words: Tensor,
    state: DecoderState,
    annotations: Tensor,
    folded: Folded,
    how: str | None = None,
) -> tuple[Tensor, Tensor, DecoderState, Locations | None]:
    """``decoder.step_locations`` with a ``Folded`` projection: the same attention, then the LSTM cell
    and deep output written out, their context terms read as alpha-weighted sums of W a."""
    emb = decoder.embed(words)
    per_location = folded.per_location
    _, alpha = decoder.attend(annotations, folded.projected, state, emb)
    alpha, locations = decoder.locate(alpha, how)  # hard: the one-hot alpha picks W a_s
    beta = decoder.gate(state.h)
    rows, gates_dim, batch = alpha.shape[0], 4 * decoder.hidden_dim, per_location.shape[0]
    weighted = torch.bmm(alpha.view(batch, rows // batch, -1), per_location).view(rows, -1)
    if beta is not None:
        weighted = beta * weighted
    lstm = decoder.lstm
    gates = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, emb, lstm.weight_ih_l0[:, : decoder.embed_dim].T)
    gates = gates.addmm_(state.h[0], lstm.weight_hh_l0.T).add_(weighted[:, :gates_dim])
    i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's LSTM gate order
    c_t = torch.sigmoid(f) * state.c[0] + torch.sigmoid(i) * torch.tanh(g)
    h_t = torch.sigmoid(o) * torch.tanh(c_t)
    if decoder.deep_output:
        out_z = weighted[:, gates_dim:] + decoder.L_z.bias
        logits = decoder.L_o(emb + decoder.L_h(h_t) + out_z)
    else:
        logits = decoder.L_o(h_t)
    return (
        logits,
        alpha,
        DecoderState(h_t.unsqueeze(0), c_t.unsqueeze(0), decoder.cover(state, alpha)),
        locations,
    )
