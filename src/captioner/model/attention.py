"""Soft additive attention over annotation vectors (paper Sec. 3.1.2, Eq. 4-6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.model.fast_decode import grouped_attention


class SoftAttention(nn.Module):
    """e_ti = w^T tanh(W_a a_i + W_h h_{t-1}); alpha_t = softmax_i(e_t); z_t = sum_i alpha_ti a_i."""

    def __init__(
        self, encoder_dim: int, hidden_dim: int, attention_dim: int, word_dim: int = 0, coverage: bool = False
    ):
        super().__init__()
        self.annotation_proj = nn.Linear(encoder_dim, attention_dim)  # W_a
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)  # W_h
        self.score = nn.Linear(attention_dim, 1)  # w
        # W_y: with word_dim > 0 the query also reads the previous word (see Decoder's attend_word).
        self.word_proj = nn.Linear(word_dim, attention_dim, bias=False) if word_dim else None
        # w_c: with coverage the energy also reads each location's summed past attention (Tu et al. 2016,
        # See et al. 2017); zero at the start, so training begins from the paper's attention.
        self.coverage_weight = nn.Parameter(torch.zeros(attention_dim)) if coverage else None

    def query(self, hidden: Tensor, word: Tensor | None = None) -> Tensor:
        """W_h h_{t-1} (+ W_y E y_{t-1} when the module reads words), (rows, A)."""
        q = self.hidden_proj(hidden)
        if self.word_proj is not None:
            if word is None:
                raise ValueError("this attention reads the previous word: pass its embedding")
            q = q + self.word_proj(word)
        return q

    def project(self, annotations: Tensor) -> Tensor:
        """W_a a_i for every location, (B,L,D) -> (B,L,A); computed once per image, reused each step."""
        return self.annotation_proj(annotations)

    def forward(
        self,
        annotations: Tensor,
        projected: Tensor,
        hidden: Tensor,
        word: Tensor | None = None,
        coverage: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Context z (B*n,D) and weights alpha (B*n,L) for hidden states (B*n,H) over (B,L,·) annotations.

        ``coverage`` (B*n,L), the attention summed over past steps, is read when the module has w_c.

        The n hidden rows of one image (its beams or samples, consecutive) share that image's
        annotations; with n > 1 ``fast_decode.grouped_attention`` computes the same weights without copies.
        """
        batch, rows = annotations.shape[0], hidden.shape[0]
        if (self.coverage_weight is None) != (coverage is None):
            raise ValueError("pass coverage exactly when the attention module has coverage weights")
        if rows != batch:  # n > 1 rows per image (beams, samples): the same numbers, computed faster
            return grouped_attention(self, annotations, projected, hidden, word, coverage)
        pre = projected + self.query(hidden, word).unsqueeze(1)  # W_a a_i + W_h h_{t-1} (+ W_y E y_{t-1})
        if coverage is not None:
            pre = pre + coverage.unsqueeze(-1) * self.coverage_weight
        energy = self.score(torch.tanh(pre)).squeeze(-1)  # e_ti, Eq. 4
        alpha = energy.softmax(dim=-1)  # Eq. 5
        context = torch.bmm(alpha.unsqueeze(1), annotations).squeeze(
            1
        )  # z_t = sum_i alpha_ti a_i, Eq. 6 (soft)
        return context, alpha
