"""LSTM decoder with soft attention, beta gate and deep output (paper Sec. 3.1.2, Eq. 1-7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from captioner.errors import ConfigError, DataError, require
from captioner.model.attention import SoftAttention, group_size
from captioner.model.hard_attention import Locations, select_locations

BETA_GATES = ("scalar", "channel", "none")
# Where z_t comes from: the paper's soft attention, or one of the quality table's two controls.
# "mean" is Show-and-Tell-like (z_t = mean annotation every step); "blind" never sees the image
# (h0/c0 from zeros, z_t = 0), so its scores show how far a language model alone gets.
CONTEXTS = ("soft", "mean", "blind")
# How z_t reads alpha: the expectation (soft, Sec. 4.2) or one sampled location (hard, Sec. 4.1).
ATTENTIONS = ("soft", "hard")
HARD_INFERENCE = ("argmax", "expectation")

State = tuple[Tensor, ...]  # (h, c) of shape (num_layers,B,H), + coverage (1,B,L) with decoder.coverage


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


def load_glove(embedding: nn.Embedding, path: str | Path, itos: Sequence[str]) -> int:
    """Copy GloVe-format vectors ("word v1 ... vE" per line) into ``embedding`` rows; returns words found.

    Words missing from the file keep their random initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"decoder.pretrained_embeddings={str(path)!r}: file not found; give a GloVe text file"
        )
    dim = embedding.embedding_dim
    stoi = {w: i for i, w in enumerate(itos)}
    found = 0
    with torch.no_grad(), path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            word, *values = line.rstrip().split(" ")
            if word not in stoi:
                continue
            if len(values) != dim:
                raise ConfigError(
                    f"decoder.pretrained_embeddings={str(path)!r} line {lineno} has {len(values)} values, "
                    f"decoder.embed_dim={dim}; set embed_dim to the file's dimension"
                )
            embedding.weight[stoi[word]] = torch.tensor([float(v) for v in values])
            found += 1
    return found


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
    objects it has already described; the sum rides in the state as a third tensor, (1,B,L).

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

    def project(self, annotations: Tensor, fold: bool = False) -> Tensor:
        """Attention's annotation projection W_a a, (B,L,D) -> (B,L,A); once per image.

        The controls never attend, so they get an empty (B,L,0) stand-in that decoders can still repeat.
        ``fold`` (for beams: many rows per image) also projects each annotation through the LSTM's
        context weights and L_z when that is cheaper (see ``can_fold``), returning them flat, (B,·);
        ``step`` then forms W z_t as sum_i alpha_ti (W a_i), the same value by linearity, in L instead
        of D multiply-adds per output. Inference only.
        """
        if self.context != "soft":
            return annotations[..., :0]
        projected = self.attention.project(annotations)
        if not (fold and self.can_fold(annotations.shape[1])):
            return projected
        w_z = self.lstm.weight_ih_l0[:, self.embed_dim :]  # the context's columns of W_ih
        weights = torch.cat([w_z, self.L_z.weight]) if self.deep_output else w_z
        # One flat row per image, (B, L*A + L*(4H[+E])): slices of it view as (B,L,·) with contiguous
        # rows, so attention and bmm read them in place (a (B,L,A+...) concat would be strided).
        return torch.cat([projected.flatten(1), (annotations @ weights.T).flatten(1)], dim=1)

    def can_fold(self, num_locations: int) -> bool:
        """Whether ``project(fold=True)`` folds: soft attention, one LSTM layer, no per-channel gate
        (a scalar gate commutes with the sum, a channel gate does not), and fewer locations than channels."""
        return (
            self.context == "soft"
            and self.num_layers == 1
            and self.beta_gate != "channel"
            and num_locations < self.encoder_dim
            and not torch.is_grad_enabled()
            and not self.training  # the written-out step has no dropout
        )

    def init_state(self, annotations: Tensor) -> State:
        """h0, c0 (num_layers,B,H) each, from tanh MLPs of the mean annotation (Sec. 3.1.2); blind: of zeros.

        With soft attention and ``coverage``, a third tensor: zero coverage, (1,B,L).
        """
        mean = annotations.mean(dim=1)
        if self.context == "blind":  # same MLPs, same parameters, but no image information
            mean = torch.zeros_like(mean)
        b = mean.shape[0]
        h = torch.tanh(self.init_h(mean)).view(b, self.num_layers, self.hidden_dim).transpose(0, 1)
        c = torch.tanh(self.init_c(mean)).view(b, self.num_layers, self.hidden_dim).transpose(0, 1)
        if self.coverage and self.context == "soft":
            # The summed past attention, (1,B,L): rows on dim 1 like h and c, so decoders reorder it alike.
            return h.contiguous(), c.contiguous(), annotations.new_zeros(1, b, annotations.shape[1])
        return h.contiguous(), c.contiguous()

    def step(
        self, words: Tensor, state: State, annotations: Tensor, projected: Tensor
    ) -> tuple[Tensor, Tensor, State]:
        """One time step: previous words (B*n,) -> next-word logits (B*n,V), alpha (B*n,L), new state.

        ``annotations``/``projected`` have one row per image (B); words and state have n consecutive
        rows per image (beams or samples; n=1 in training), which share that image's annotations.
        Hard attention samples its location in training mode and uses ``hard_inference`` in eval mode;
        alpha is then the one-hot of the location looked at (or the expectation's weights).
        """
        logits, alpha, state, _ = self.step_locations(words, state, annotations, projected)
        return logits, alpha, state

    def hard_mode(self) -> str:
        """How hard attention picks z_t now: ``sample`` in training, ``hard_inference`` in eval mode."""
        return "sample" if self.training else self.hard_inference

    def step_locations(
        self,
        words: Tensor,
        state: State,
        annotations: Tensor,
        projected: Tensor,
        how: str | None = None,
    ) -> tuple[Tensor, Tensor, State, Locations | None]:
        """``step`` plus hard attention's chosen location (None with soft attention or the expectation).

        ``how`` (hard only): ``sample`` | ``argmax`` | ``expectation``; None = ``hard_mode()``.
        """
        h, c, *coverage = state
        emb = self.embed(words)
        coverage = coverage[0][0] if coverage else None
        folded = projected.dim() == 2
        if folded:  # project(fold=True): W_a a, then W a for the context's LSTM and deep-output terms
            batch, num_locations = annotations.shape[:2]
            split = num_locations * self.attention.score.in_features
            projected, per_location = (
                projected[:, :split].view(batch, num_locations, -1),
                projected[:, split:].view(batch, num_locations, -1),
            )
        context, alpha = self.attend(
            annotations,
            projected,
            h[-1],
            emb if self.attend_word else None,
            coverage,
        )
        locations = None
        if self.hard and (how or self.hard_mode()) != "expectation":
            # Sec. 4.1: z_t = a_s for one location s (Eq. 8-9); alpha becomes its one-hot weights.
            alpha, locations = select_locations(alpha, how or self.hard_mode())
            if not folded:
                n = group_size(alpha.shape[0], annotations.shape[0])
                context = torch.bmm(alpha.view(annotations.shape[0], n, -1), annotations).view(
                    alpha.shape[0], -1
                )
        beta = torch.sigmoid(self.f_beta(h[-1])) if self.f_beta is not None else None  # gate, Sec. 4.2.1
        if folded:
            return (*self._folded_step(emb, alpha, beta, h, c, per_location, coverage), locations)
        if beta is not None:
            context = beta * context
        out, (h, c) = self.lstm(torch.cat([emb, context], dim=-1).unsqueeze(0), (h, c))
        h_t = out.squeeze(0)
        if self.deep_output:
            logits = self.L_o(self.dropout(emb + self.L_h(h_t) + self.L_z(context)))
        else:
            logits = self.L_o(self.dropout(h_t))
        if coverage is not None:
            return logits, alpha, (h, c, (coverage + alpha).unsqueeze(0)), locations
        return logits, alpha, (h, c), locations

    def _folded_step(
        self,
        emb: Tensor,
        alpha: Tensor,
        beta: Tensor | None,
        h: Tensor,
        c: Tensor,
        per_location: Tensor,
        coverage: Tensor | None,
    ) -> tuple[Tensor, Tensor, State]:
        """``step`` after attention with a folded ``projected``: the LSTM cell and deep output written
        out, their context terms read as alpha-weighted sums of ``per_location`` (B,L,4H[+E]) = W a."""
        rows, gates_dim, batch = alpha.shape[0], 4 * self.hidden_dim, per_location.shape[0]
        weighted = torch.bmm(alpha.view(batch, rows // batch, -1), per_location).view(rows, -1)
        if beta is not None:
            weighted = beta * weighted
        lstm = self.lstm
        gates = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, emb, lstm.weight_ih_l0[:, : self.embed_dim].T)
        gates = gates.addmm_(h[0], lstm.weight_hh_l0.T).add_(weighted[:, :gates_dim])
        i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's LSTM gate order
        c_t = torch.sigmoid(f) * c[0] + torch.sigmoid(i) * torch.tanh(g)
        h_t = torch.sigmoid(o) * torch.tanh(c_t)
        if self.deep_output:
            out_z = weighted[:, gates_dim:] + self.L_z.bias
            logits = self.L_o(emb + self.L_h(h_t) + out_z)
        else:
            logits = self.L_o(h_t)
        state = (h_t.unsqueeze(0), c_t.unsqueeze(0))
        if coverage is not None:
            state = (*state, (coverage + alpha).unsqueeze(0))
        return logits, alpha, state

    def attend(
        self,
        annotations: Tensor,
        projected: Tensor,
        hidden: Tensor,
        word: Tensor | None = None,
        coverage: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Context z_t (B*n,D) and alpha (B*n,L) for ``self.context``; soft reads h_{t-1} (Eq. 4-6).

        ``hidden`` has n consecutive rows per image of ``annotations`` (B,L,D); n=1 in training.
        """
        if self.context == "soft":
            return self.attention(annotations, projected, hidden, word, coverage)
        rows, num_locations = hidden.shape[0], annotations.shape[1]
        alpha = annotations.new_full((rows, num_locations), 1.0 / num_locations)
        if self.context == "mean":
            mean = annotations.mean(dim=1)
            n = group_size(rows, annotations.shape[0])
            return (mean if n == 1 else mean.repeat_interleave(n, dim=0)), alpha
        return annotations.new_zeros(rows, annotations.shape[-1]), alpha

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
