"""Soft additive attention over annotation vectors (paper Sec. 3.1.2, Eq. 4-6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SoftAttention(nn.Module):
    """e_ti = w^T tanh(W_a a_i + W_h h_{t-1}); alpha_t = softmax_i(e_t); z_t = sum_i alpha_ti a_i."""

    def __init__(self, encoder_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.annotation_proj = nn.Linear(encoder_dim, attention_dim)  # W_a
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)  # W_h
        self.score = nn.Linear(attention_dim, 1)  # w

    def project(self, annotations: Tensor) -> Tensor:
        """W_a a_i for every location, (B,L,D) -> (B,L,A); computed once per image, reused each step."""
        return self.annotation_proj(annotations)

    def forward(self, annotations: Tensor, projected: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Context z (B,D) and weights alpha (B,L) for the previous hidden state (B,H)."""
        energy = self.score(torch.tanh(projected + self.hidden_proj(hidden).unsqueeze(1))).squeeze(-1)
        alpha = energy.softmax(dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), annotations).squeeze(1)
        return context, alpha
