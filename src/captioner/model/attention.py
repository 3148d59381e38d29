"""Soft additive attention over annotation vectors (paper Sec. 3.1.2, Eq. 4-6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.model.state import group_size


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
        *,
        fast: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Context z (B*n,D) and weights alpha (B*n,L) for hidden states (B*n,H) over (B,L,·) annotations.

        The n hidden rows of one image (its beams or samples, consecutive; n=1 in training) share that
        image's annotations: they are broadcast against them, never copied. ``coverage`` (B*n,L), the
        attention summed over past steps, is read when the module has w_c. ``fast`` (inference only)
        computes Eq. 4 through a sigmoid (``_fast_energy``): the same alpha up to rounding.
        """
        if (self.coverage_weight is None) != (coverage is None):
            raise ValueError("pass coverage exactly when the attention module has coverage weights")
        batch, rows = annotations.shape[0], hidden.shape[0]
        n = group_size(rows, batch)
        query = self.query(hidden, word).view(batch, n, 1, -1)  # W_h h_{t-1} (+ W_y E y_{t-1}), (B,n,1,A)
        covered = None if coverage is None else coverage.view(batch, n, -1, 1)  # (B,n,L,1)
        if fast:
            energy = self._fast_energy(projected, query, covered)
        else:
            pre = projected.unsqueeze(1) + query  # W_a a_i + W_h h_{t-1}: (B,1,L,A) + (B,n,1,A)
            if covered is not None:
                pre = pre + covered * self.coverage_weight
            energy = self.score(torch.tanh(pre)).squeeze(-1)  # e_ti, Eq. 4
        alpha = energy.softmax(dim=-1)  # Eq. 5
        context = torch.bmm(alpha, annotations)  # z_t = sum_i alpha_ti a_i, Eq. 6 (soft)
        return context.view(rows, -1), alpha.view(rows, -1)

    # --- speed path: beams and samples at inference (``fast=True``); the same alpha up to rounding ---

    def _fast_energy(self, projected: Tensor, query: Tensor, covered: Tensor | None) -> Tensor:
        """Eq. 4's energies (B,n,L) up to a constant per row, which the softmax ignores.

        tanh(x) = 2 sigmoid(2x) - 1, so w.tanh(u) + b = 2w.sigmoid(2u) - sum(w) + b: alpha is the same up
        to rounding (~1e-6 relative in float32). Why: torch's CPU tanh costs ~3.5 ns per value vs ~0.4
        for sigmoid (2-core EPYC, torch 2.14), and this op runs over B*n*L*A values every step (a
        quarter of batched beam time with tanh). 2P + 2q is exactly 2(P + q) in floating point. A few
        images at a time through one reused buffer: the (c,n,L,A) temporary stays in cache, where a
        fresh B*n*L*A tensor every step cost more in page faults than the add itself.
        """
        if torch.is_grad_enabled():
            raise ValueError(
                "fast attention writes into reused buffers: call it under torch.inference_mode()"
            )
        batch, n = query.shape[:2]
        query2, projected2, weight2 = query * 2, projected.unsqueeze(1), 2 * self.score.weight[0]
        if covered is not None:
            covered2 = covered * 2
        chunk = min(batch, max(1, _CHUNK_VALUES // (n * projected.shape[1] * projected.shape[2])))
        buffer = projected.new_empty(chunk, n, *projected.shape[1:])
        energies = []
        for i in range(0, batch, chunk):
            gate = torch.add(
                query2[i : i + chunk], projected2[i : i + chunk], alpha=2, out=buffer[: batch - i]
            )
            if covered is not None:
                gate.addcmul_(covered2[i : i + chunk], self.coverage_weight)
            energies.append(gate.sigmoid_() @ weight2)
        return torch.cat(energies)


# Values per temporary in the fast energies (4 MB of float32): well inside L3, under malloc's mmap threshold.
_CHUNK_VALUES = 1 << 20
