"""LSTM decoder with soft attention, beta gate and deep output (paper Sec. 3.1.2 and 4, Eq. 1-7).

One step (``Decoder.step``) over the annotations a_i (B,L,D), in the paper's terms::

    E y_{t-1}                                   embedding of the previous word               ``embed``
    e_ti = f_att(a_i, h_{t-1})                  = w.tanh(W_a a_i + W_h h_{t-1})    Eq. 4      ``attend``
    alpha_t = softmax_i(e_t)                                                       Eq. 5
    z_t = phi({a_i}, alpha_t)                   soft: sum_i alpha_ti a_i           Eq. 6, 4.2 ``attend``
                                                hard: a_s, s ~ Multinoulli(alpha)  Eq. 8-9    ``locate``
    beta_t = sigmoid(f_beta(h_{t-1})), z_t <- beta_t z_t                           Sec. 4.2.1 ``gate``
    (i, f, o, g) = (sig, sig, sig, tanh)(T [E y_{t-1}; h_{t-1}; z_t])              Eq. 1      ``lstm``
    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)                                Eq. 2-3
    p(y_t | a, y_<t) ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))                     Eq. 7      ``output``

with h_0, c_0 = tanh MLPs of the mean annotation (``init_state``). Beams and samples at inference may
ask for Eq. 4 in a faster form (``fast=True``, the same alpha up to rounding); beam search's folded
step (``fast_decode``) reuses these pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captioner.errors import DataError, require
from captioner.model.attention import SoftAttention
from captioner.model.embeddings import load_glove
from captioner.model.hard_attention import Locations, select_locations
from captioner.model.state import DecoderState, group_size

BETA_GATES = ("scalar", "channel", "none")
# Where z_t comes from: the paper's soft attention, or one of the quality table's two controls.
# "mean" is Show-and-Tell-like (z_t = mean annotation every step); "blind" never sees the image
# (h0/c0 from zeros, z_t = 0), so its scores show how far a language model alone gets.
CONTEXTS = ("soft", "mean", "blind")
# How z_t reads alpha: the expectation (soft, Sec. 4.2) or one sampled location (hard, Sec. 4.1).
ATTENTIONS = ("soft", "hard")
HARD_INFERENCE = ("argmax", "expectation")


@dataclass
class DecoderOutput:
    """Per-step outputs of a teacher-forced pass: ``logits`` (B,T-1,V) predict captions[:, 1:]."""

    logits: Tensor
    alphas: Tensor  # (B, T-1, L) attention weights of each step (hard: one-hot where a location was sampled)
    # Hard attention on a sampled minibatch: log p(s_t|a) and H[alpha_t], (B, T-1); None otherwise.
    location_log_probs: Tensor | None = None
    location_entropy: Tensor | None = None


def _positive_int(name: str, value: object) -> None:
    require(isinstance(value, int) and value > 0, f"decoder.{name}={value!r} must be a positive int")


class Decoder(nn.Module):
    """Attention LSTM over annotations (B,L,D) producing next-word logits, one step at a time.

    ``context`` picks z_t: ``soft`` (the paper), ``mean`` (uniform alpha, z_t = mean annotation) or
    ``blind`` (z_t = 0 and h0/c0 from zeros: the image never reaches the words). The controls return
    a uniform alpha (1/L) so figures and grounding metrics still run; they keep the attention module
    (same parameters, same checkpoints) but never call it.

    ``attend_word`` adds the previous word to the attention query, e = w.tanh(W_a a + W_h h_{t-1} + W_y E y_{t-1}).
    The paper's f_att(a, h_{t-1}) cannot see the word just emitted: h_{t-1} was computed before it was
    chosen, so after "a blue" the query does not know which colour was said and cannot pick the blue
    object for the next word; with the word in the query it can. ``coverage`` adds each location's
    summed past attention to the energy (Tu et al. 2016; See et al. 2017), so the decoder can tell which
    objects it has already described; the sum rides in ``DecoderState.coverage``, (1,B,L).

    Weight tying makes the output projection's weight the embedding's Parameter (same storage, both
    paths train it). With deep output the projection is L_o (E -> V), so any sizes tie; without it the
    projection reads the hidden state, so tying needs ``hidden_dim == embed_dim`` (ConfigError otherwise,
    rather than a hidden extra projection).

    The ``decoder`` config group sets these keyword arguments (defaults here, nowhere else):
    ``num_layers`` (seed: a 2nd layer did not help), ``dropout`` (seed v17/v42: 0.5 helped),
    ``deep_output`` (paper Eq. 7; seed: without it the decoder ignores the image), ``beta_gate``
    (scalar: paper Sec. 4.2.1 | channel: seed | none), ``tie_weights``, ``embed_max_norm`` (seed:
    normalise randomly initialised embeddings, e.g. 1.0), ``pretrained_embeddings`` (a GloVe-format text
    file; embed_dim must equal its dimension), ``freeze_embeddings``, ``context``, ``attend_word``, ``coverage``.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 256,
        attention_dim: int = 256,
        num_layers: int = 1,
        dropout: float = 0.5,
        deep_output: bool = True,
        beta_gate: str = "scalar",
        tie_weights: bool = False,
        embed_max_norm: float | None = None,
        pretrained_embeddings: str | None = None,
        freeze_embeddings: bool = False,
        context: str = "soft",
        attend_word: bool = False,
        coverage: bool = False,
        attention: str = "soft",
        hard_inference: str = "argmax",
        hard_expected_prob: float = 0.5,
        vocab_itos: Sequence[str] | None = None,
    ):
        super().__init__()
        for name, value in [
            ("vocab_size", vocab_size),
            ("encoder_dim", encoder_dim),
            ("embed_dim", embed_dim),
            ("hidden_dim", hidden_dim),
            ("attention_dim", attention_dim),
            ("num_layers", num_layers),
        ]:
            _positive_int(name, value)
        require(0.0 <= dropout < 1.0, f"decoder.dropout={dropout!r} must be in [0, 1)")
        require(
            beta_gate in BETA_GATES,
            f"decoder.beta_gate={beta_gate!r} is unknown; valid: {', '.join(BETA_GATES)}",
        )
        require(
            context in CONTEXTS,
            f"decoder.context={context!r} is unknown; valid: {', '.join(CONTEXTS)}",
        )
        require(
            attention in ATTENTIONS,
            f"decoder.attention={attention!r} is unknown; valid: {', '.join(ATTENTIONS)}",
        )
        require(
            attention == "soft" or context == "soft",
            f"decoder.attention=hard needs decoder.context=soft (got {context!r}): the controls never attend",
        )
        require(
            hard_inference in HARD_INFERENCE,
            f"decoder.hard_inference={hard_inference!r} is unknown; valid: {', '.join(HARD_INFERENCE)}",
        )
        require(
            0.0 <= hard_expected_prob <= 1.0,
            f"decoder.hard_expected_prob={hard_expected_prob!r} must be in [0, 1] (the paper: 0.5)",
        )
        require(
            not (tie_weights and not deep_output and hidden_dim != embed_dim),
            f"decoder.tie_weights=true without deep_output needs hidden_dim == embed_dim, got "
            f"hidden_dim={hidden_dim}, embed_dim={embed_dim}; make them equal or set deep_output=true",
        )
        require(
            not (tie_weights and freeze_embeddings),
            "decoder.tie_weights=true with freeze_embeddings=true would also freeze the output layer; "
            "set one of them false",
        )
        require(
            embed_max_norm is None or embed_max_norm > 0,
            f"decoder.embed_max_norm={embed_max_norm!r} must be > 0 or null",
        )
        require(
            pretrained_embeddings is None or (vocab_itos is not None and len(vocab_itos) == vocab_size),
            f"decoder.pretrained_embeddings={pretrained_embeddings!r} needs vocab_itos (the vocabulary's "
            f"{vocab_size} words) passed to the Decoder",
        )
        self.vocab_size = vocab_size
        self.encoder_dim = encoder_dim
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.deep_output = deep_output
        self.beta_gate = beta_gate
        self.tie_weights = tie_weights
        self.embed_max_norm = embed_max_norm
        self.context = context
        self.attend_word = bool(attend_word)
        self.coverage = bool(coverage)
        self.hard = attention == "hard"
        self.hard_inference = hard_inference
        self.hard_expected_prob = hard_expected_prob
        if self.hard:  # REINFORCE's moving-average baseline [b, updates]: a buffer, so checkpoints keep it
            self.register_buffer("location_baseline", torch.zeros(2))

        self.embedding = nn.Embedding(vocab_size, embed_dim)
        # Small init keeps tied logits near zero at the start (N(0,1) rows give huge logits).
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if pretrained_embeddings is not None:
            load_glove(self.embedding, pretrained_embeddings, vocab_itos)
        self.embedding.weight.requires_grad_(not freeze_embeddings)

        self.attention = SoftAttention(
            encoder_dim, hidden_dim, attention_dim, embed_dim if attend_word else 0, self.coverage
        )
        # h0, c0 from the mean annotation through separate MLPs (Sec. 3.1.2), one per LSTM layer.
        self.init_h = nn.Linear(encoder_dim, num_layers * hidden_dim)
        self.init_c = nn.Linear(encoder_dim, num_layers * hidden_dim)
        gate_dim = {"scalar": 1, "channel": encoder_dim, "none": 0}[beta_gate]
        self.f_beta = (
            nn.Linear(hidden_dim, gate_dim) if gate_dim else None
        )  # beta = sigmoid(f_beta(h)), Sec. 4.2.1
        self.lstm = nn.LSTM(
            embed_dim + encoder_dim, hidden_dim, num_layers, dropout=dropout if num_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        if deep_output:  # Eq. 7: p(y_t) ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))
            self.L_h = nn.Linear(hidden_dim, embed_dim)
            self.L_z = nn.Linear(encoder_dim, embed_dim)
            self.L_o = nn.Linear(embed_dim, vocab_size)
        else:
            self.L_o = nn.Linear(hidden_dim, vocab_size)
        if tie_weights:
            self.L_o.weight = self.embedding.weight

    def embed(self, words: Tensor) -> Tensor:
        """E y for word ids (B,) -> (B,E); rows longer than ``embed_max_norm`` are scaled down.

        Done out of place rather than via nn.Embedding(max_norm=...), whose in-place renorm of the
        weight breaks autograd when that weight is also the tied output projection.
        """
        e = self.embedding(words)
        if self.embed_max_norm is not None:
            e = e * (self.embed_max_norm / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return e

    def project(self, annotations: Tensor) -> Tensor:
        """Attention's annotation projection W_a a, (B,L,D) -> (B,L,A); once per image.

        The controls never attend, so they get an empty (B,L,0) stand-in that decoders can still repeat.
        """
        if self.context != "soft":
            return annotations[..., :0]
        return self.attention.project(annotations)

    def init_state(self, annotations: Tensor) -> DecoderState:
        """h0, c0 (num_layers,B,H) each, from tanh MLPs of the mean annotation (Sec. 3.1.2); blind: of zeros.

        With soft attention and ``coverage``, zero coverage (1,B,L); None otherwise.
        """
        mean = annotations.mean(dim=1)
        if self.context == "blind":  # same MLPs, same parameters, but no image information
            mean = torch.zeros_like(mean)
        b = mean.shape[0]
        h = torch.tanh(self.init_h(mean)).view(b, self.num_layers, self.hidden_dim).transpose(0, 1)
        c = torch.tanh(self.init_c(mean)).view(b, self.num_layers, self.hidden_dim).transpose(0, 1)
        coverage = None
        if self.coverage and self.context == "soft":
            # The summed past attention, (1,B,L): rows on dim 1 like h and c, so decoders reorder it alike.
            coverage = annotations.new_zeros(1, b, annotations.shape[1])
        return DecoderState(h.contiguous(), c.contiguous(), coverage)

    def step(
        self,
        words: Tensor,
        state: DecoderState,
        annotations: Tensor,
        projected: Tensor,
        *,
        fast: bool = False,
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """One time step: previous words (B*n,) -> next-word logits (B*n,V), alpha (B*n,L), new state.

        ``annotations``/``projected`` (= ``project(annotations)``) have one row per image (B); words and
        state have n consecutive rows per image (beams or samples; n=1 in training), which share that
        image's annotations. ``fast`` (inference): the attention's faster Eq. 4, equal up to rounding.
        Hard attention samples its location in training mode and uses ``hard_inference`` in eval mode;
        alpha is then the one-hot of the location looked at (or the expectation's weights).
        """
        logits, alpha, state, _ = self.step_locations(words, state, annotations, projected, fast=fast)
        return logits, alpha, state

    def hard_mode(self) -> str:
        """How hard attention picks z_t now: ``sample`` in training, ``hard_inference`` in eval mode."""
        return "sample" if self.training else self.hard_inference

    def step_locations(
        self,
        words: Tensor,
        state: DecoderState,
        annotations: Tensor,
        projected: Tensor,
        how: str | None = None,
        *,
        fast: bool = False,
    ) -> tuple[Tensor, Tensor, DecoderState, Locations | None]:
        """``step`` plus hard attention's chosen location (None with soft attention or the expectation).

        ``how`` (hard only): ``sample`` | ``argmax`` | ``expectation``; None = ``hard_mode()``.
        """
        emb = self.embed(words)  # E y_{t-1}
        context, alpha = self.attend(annotations, projected, state, emb, fast=fast)  # Eq. 4-6
        alpha, locations = self.locate(alpha, how)
        if locations is not None:  # hard, Eq. 8-9: z_t = a_s, the annotation the one-hot alpha picks
            n = group_size(alpha.shape[0], annotations.shape[0])
            context = torch.bmm(alpha.view(annotations.shape[0], n, -1), annotations).view(alpha.shape[0], -1)
        beta = self.gate(state.h)
        if beta is not None:
            context = beta * context
        # Eq. 1-3: one LSTM step on [E y_{t-1}; z_t] from (h_{t-1}, c_{t-1}).
        out, (h, c) = self.lstm(torch.cat([emb, context], dim=-1).unsqueeze(0), (state.h, state.c))
        logits = self.output(emb, out.squeeze(0), self.L_z(context) if self.deep_output else None)  # Eq. 7
        return logits, alpha, DecoderState(h, c, self.cover(state, alpha)), locations

    def attend(
        self, annotations: Tensor, projected: Tensor, state: DecoderState, emb: Tensor, *, fast: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Context z_t (B*n,D) and alpha (B*n,L) for ``self.context``; soft: f_att reads h_{t-1} (Eq. 4-6),
        with ``attend_word`` also E y_{t-1} (``emb``), with ``coverage`` also the summed past alphas.

        ``state`` has n consecutive rows per image of ``annotations`` (B,L,D); n=1 in training.
        ``fast``: the attention's faster Eq. 4 (inference only; the controls never attend).
        """
        hidden = state.h[-1]  # the top layer's h_{t-1}
        if self.context == "soft":
            coverage = None if state.coverage is None else state.coverage[0]
            word = emb if self.attend_word else None
            return self.attention(annotations, projected, hidden, word, coverage, fast=fast)
        rows, num_locations = hidden.shape[0], annotations.shape[1]
        alpha = annotations.new_full((rows, num_locations), 1.0 / num_locations)
        if self.context == "mean":
            mean = annotations.mean(dim=1)
            n = group_size(rows, annotations.shape[0])
            return (mean if n == 1 else mean.repeat_interleave(n, dim=0)), alpha
        return annotations.new_zeros(rows, annotations.shape[-1]), alpha

    def locate(self, alpha: Tensor, how: str | None = None) -> tuple[Tensor, Locations | None]:
        """Hard attention (Sec. 4.1): the one-hot of the location looked at and its log p and entropy.

        ``how``: ``sample`` | ``argmax`` | ``expectation``; None = ``hard_mode()``. Soft attention and the
        expectation keep alpha (z_t is then its expectation) and return no locations.
        """
        how = how or self.hard_mode()
        if not self.hard or how == "expectation":
            return alpha, None
        return select_locations(alpha, how)

    def gate(self, h: Tensor) -> Tensor | None:
        """beta_t = sigmoid(f_beta(h_{t-1})) (Sec. 4.2.1): (B*n,1) scalar or (B*n,D) channel gate; None if off."""
        return torch.sigmoid(self.f_beta(h[-1])) if self.f_beta is not None else None

    def cover(self, state: DecoderState, alpha: Tensor) -> Tensor | None:
        """The next state's coverage: past attention plus alpha_t, (1,B*n,L); None without coverage."""
        return None if state.coverage is None else (state.coverage[0] + alpha).unsqueeze(0)

    def output(self, emb: Tensor, h_t: Tensor, l_z: Tensor | None) -> Tensor:
        """Next-word logits (B*n,V): deep output L_o(E y_{t-1} + L_h h_t + L_z z_t) (Eq. 7), or L_o h_t.

        ``l_z`` is L_z z_t (None without deep output); beam search's fold forms it from per-image terms.
        """
        if self.deep_output:
            return self.L_o(self.dropout(emb + self.L_h(h_t) + l_z))
        return self.L_o(self.dropout(h_t))

    def forward(self, annotations: Tensor, captions: Tensor, teacher_forcing: float = 1.0) -> DecoderOutput:
        """Predict captions[:, 1:] from captions[:, :-1], with scheduled sampling (Bengio et al. 2015).

        At each step t > 0 every sequence feeds the ground-truth previous word with probability
        ``teacher_forcing`` (epsilon), else its own previous argmax (detached).
        """
        require(0.0 <= teacher_forcing <= 1.0, f"teacher_forcing={teacher_forcing!r} must be in [0, 1]")
        require(
            captions.dim() == 2 and captions.shape[1] >= 2,
            f"captions must be (B,T) with T >= 2 (<start> + a word), got shape {tuple(captions.shape)}",
            DataError,
        )
        projected = self.project(annotations)
        state = self.init_state(annotations)
        words = captions[:, 0]
        how = self.hard_mode() if self.hard else None
        if self.hard and self.training and float(torch.rand(())) < self.hard_expected_prob:
            how = "expectation"  # Sec. 4.1: the whole minibatch uses the expected context (arctic-captions)
        logits, alphas, locations = [], [], []
        for t in range(captions.shape[1] - 1):
            if t > 0 and teacher_forcing < 1.0:
                predicted = logits[-1].detach().argmax(dim=-1)
                if teacher_forcing <= 0.0:
                    words = predicted
                else:  # torch.rand (global RNG) so seeding the run makes it reproducible
                    use_truth = torch.rand(words.shape[0], device=words.device) < teacher_forcing
                    words = torch.where(use_truth, captions[:, t], predicted)
            elif t > 0:
                words = captions[:, t]
            step_logits, alpha, state, where = self.step_locations(words, state, annotations, projected, how)
            logits.append(step_logits)
            alphas.append(alpha)
            locations.append(where)
        out = DecoderOutput(logits=torch.stack(logits, dim=1), alphas=torch.stack(alphas, dim=1))
        if locations[0] is not None and self.training:
            out.location_log_probs = torch.stack([w.log_prob for w in locations], dim=1)
            out.location_entropy = torch.stack([w.entropy for w in locations], dim=1)
        return out
