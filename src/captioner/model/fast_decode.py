"""Beam search's folded decoder step: W z_t formed as sum_i alpha_ti (W a_i) from per-image projections.

By linearity W z_t = W sum_i alpha_ti a_i = sum_i alpha_ti (W a_i), for the context's columns of the
LSTM's W_ih and (with deep output) L_z. With k beams per image, W a_i is computed once per image and
each step costs L instead of D multiply-adds per output: the same numbers up to rounding. Beam search
asks for it by name (``can_fold``, ``fold``, ``folded_step``); ``Decoder.step`` never comes here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.model.decoder import Decoder
from captioner.model.state import DecoderState


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
    """Whether folding is exact and cheaper: soft attention, one LSTM layer, no per-channel gate (a
    scalar gate commutes with the sum, a channel gate does not), fewer locations than channels, and
    inference (the written-out step has no dropout)."""
    return (
        decoder.context == "soft"
        and decoder.num_layers == 1
        and decoder.beta_gate != "channel"
        and num_locations < decoder.encoder_dim
        and not torch.is_grad_enabled()
        and not decoder.training
    )


def fold(decoder: Decoder, annotations: Tensor, projected: Tensor) -> Folded:
    """``projected`` (= ``decoder.project(annotations)``) and the context's weights applied to every
    annotation (B,L,D), once per image."""
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
    *,
    fast: bool = False,
) -> tuple[Tensor, Tensor, DecoderState]:
    """``decoder.step`` on a ``fold``: the same attention, then the LSTM cell with its context term read
    as an alpha-weighted sum of W a, and the decoder's deep output with L_z z_t formed alike."""
    emb = decoder.embed(words)
    per_location = folded.per_location
    _, alpha = decoder.attend(annotations, folded.projected, state, emb, fast=fast)
    alpha, _ = decoder.locate(alpha)  # hard: the one-hot alpha picks W a_s
    beta = decoder.gate(state.h)
    rows, gates_dim, batch = alpha.shape[0], 4 * decoder.hidden_dim, per_location.shape[0]
    weighted = torch.bmm(alpha.view(batch, rows // batch, -1), per_location).view(rows, -1)
    if beta is not None:
        weighted = beta * weighted
    # Eq. 1-3 written out: nn.LSTM multiplies W_ih by [E y; z_t] itself and no torch cell takes a
    # per-row gate term, so the fold needs its own cell. It pays where D >> L: beam search k=5,
    # max_len 20, 16 images of bench/beam.py's D=1280 L=49 H=512 model, 1 thread: 1.20 s folded vs
    # 1.82 s through nn.LSTM (1.5x; 2-core Xeon, torch 2.14); one image at a time 2.9x (docs/benchmarks.md).
    lstm = decoder.lstm
    gates = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, emb, lstm.weight_ih_l0[:, : decoder.embed_dim].T)
    gates = gates.addmm_(state.h[0], lstm.weight_hh_l0.T).add_(weighted[:, :gates_dim])
    i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's LSTM gate order
    c_t = torch.sigmoid(f) * state.c[0] + torch.sigmoid(i) * torch.tanh(g)
    h_t = torch.sigmoid(o) * torch.tanh(c_t)
    l_z = weighted[:, gates_dim:] + decoder.L_z.bias if decoder.deep_output else None  # L_z z_t
    logits = decoder.output(emb, h_t, l_z)
    return logits, alpha, DecoderState(h_t.unsqueeze(0), c_t.unsqueeze(0), decoder.cover(state, alpha))
