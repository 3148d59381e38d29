"""The training fast path's teacher-forced pass: ``Decoder.forward``'s equations regrouped for fewer, larger ops.

The same Eq. 1-7 as ``Decoder.step`` (soft attention and the two controls, one LSTM layer), equal up to
rounding, with every matrix product that reads the same input done as one:

    [W_h; f_beta; W_hh] h_{t-1}      one product per step (attention query, beta gate, LSTM's h term)
    [W_y; W_ie] E y_{t-1}           all steps at once before the loop when every word is given (eps = 1)
    [W_iz; L_z] z_t                 one product per step (LSTM's context term, deep output's L_z z_t)
    L_o(...)                        all steps at once after the loop when eps = 1

The per-step work between the products (attention energies, softmax, gate, LSTM cell, deep output's
sum) is one compiled ``cell`` (``torch.compile``: fused kernels; on CUDA also a CUDA graph). What draws
random numbers stays outside it, in ``Decoder.forward``'s order (scheduled sampling's coin, then the deep
output's dropout, each step), so a seeded run draws the same masks and words as the eager path.
``captioner.train.fast_path`` decides when training takes this path; ``Decoder.step`` never comes here.
SCST's rollouts on the fast path (``captioner.decode.fast_rollout``) step through the same ``cell``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from captioner.errors import ConfigError, DataError, require
from captioner.model.decoder import Decoder, DecoderOutput


def fusion_gap(decoder: Decoder) -> str | None:
    """Why this pass does not cover ``decoder`` (the eager path trains it), or None when it does."""
    if decoder.hard:
        return (
            "the training fast path does not cover decoder.attention=hard (its sampled locations draw "
            "random numbers inside the step)"
        )
    if decoder.num_layers != 1:
        return (
            f"the training fast path covers one LSTM layer, not decoder.num_layers={decoder.num_layers} "
            "(nn.LSTM's dropout between layers draws random numbers inside the step)"
        )
    return None


def check_fusable(decoder: Decoder) -> None:
    """ConfigError, in one line, for a decoder this pass does not cover (``trainer.compile=on`` asked)."""
    gap = fusion_gap(decoder)
    if gap:
        raise ConfigError(f"{gap}; set trainer.compile=auto or off")


def cell(
    h: Tensor,
    c: Tensor,
    coverage: Tensor | None,
    word_terms: Tensor,
    emb_out: Tensor,
    annotations: Tensor,
    projected: Tensor,
    context: Tensor | None,
    weights: Tensor,
    sizes: tuple[int, int, int, int],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """One step: (h, c (B,H), coverage (B,L)) -> (h_t, c_t, coverage_t, alpha_t (B,L), deep output's word
    and context terms E y_{t-1} + L_z z_t + biases (B,E); without deep output, an empty (B,0)).

    ``word_terms`` (B, [A] + 4H) holds W_y E y_{t-1} (with ``attend_word``) and W_ie E y_{t-1};
    ``emb_out`` is E y_{t-1} + L_h's and L_z's biases. ``context`` is the controls' fixed z_t (None:
    soft attention, Eq. 4-6). ``weights`` is ``pack_weights``'s flat buffer, ``sizes`` its (A, gate, word
    attention A or 0, coverage A or 0): one tensor, so the steps' gradients meet in one sum.
    Returns alpha None for the controls (the caller fills in the uniform one).
    """
    attention_dim, gate_dim, word_dim, coverage_dim = sizes
    hidden, encoder_dim = h.shape[-1], annotations.shape[-1]
    rows_h = attention_dim + gate_dim + 4 * hidden
    score_dim = attention_dim + 1 if attention_dim else 0  # w and its bias (the controls: none)
    w_h, b_h, w_z, score, coverage_w = weights.split(
        [rows_h * hidden, rows_h, weights.shape[0] - rows_h * (hidden + 1) - score_dim - coverage_dim,
         score_dim, coverage_dim]
    )  # fmt: skip
    q = torch.addmm(b_h, h, w_h.view(rows_h, hidden).t())  # [W_h h; f_beta h; W_hh h]
    q_att, q_gate, gates = q.split([attention_dim, gate_dim, 4 * hidden], dim=-1)
    alpha = None
    if context is None:  # Eq. 4-6
        if word_dim:
            q_att = q_att + word_terms[:, :attention_dim]
        pre = projected + q_att.unsqueeze(1)  # W_a a_i + W_h h_{t-1} (+ W_y E y_{t-1}), (B,L,A)
        if coverage_dim:
            pre = pre + coverage.unsqueeze(-1) * coverage_w
        energy = torch.tanh(pre) @ score[:-1] + score[-1]  # e_ti, Eq. 4
        alpha = energy.softmax(dim=-1)  # Eq. 5
        context = torch.bmm(alpha.unsqueeze(1), annotations).squeeze(1)  # Eq. 6
    if gate_dim:  # Sec. 4.2.1
        context = torch.sigmoid(q_gate) * context
    z = context @ w_z.view(-1, encoder_dim).t()  # [W_iz z_t; L_z z_t]
    gates = gates + word_terms[:, word_dim:] + z[:, : 4 * hidden]  # Eq. 1
    i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's LSTM gate order
    c_t = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # Eq. 2
    h_t = torch.sigmoid(o) * torch.tanh(c_t)  # Eq. 3
    if coverage is not None and alpha is not None:
        coverage = coverage + alpha
    return h_t, c_t, coverage, alpha, emb_out + z[:, 4 * hidden :]


Cell = Callable[..., tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor]]


def lstm_weights(decoder: Decoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The LSTM's W_ih, W_hh, b_ih, b_hh (read outside compiled code: Dynamo refuses to trace nn.LSTM)."""
    lstm = decoder.lstm
    return lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0


def pack_weights(decoder: Decoder, lstm: tuple[Tensor, ...]) -> tuple[Tensor, tuple[int, int, int, int]]:
    """The cell's weights in one flat buffer, and ``cell``'s ``sizes``: [W_h; f_beta; W_hh] and their
    biases (+ the LSTM's input bias), [W_iz; L_z], w and its bias, w_c. Once per pass; the gradients
    reach each parameter through the cat. ``lstm`` is ``lstm_weights(decoder)``."""
    d, attention = decoder, decoder.attention
    weight_ih, weight_hh, bias_ih, bias_hh = lstm
    soft = d.context == "soft"
    gate_dim = 0 if d.f_beta is None else d.f_beta.out_features
    gate = [] if d.f_beta is None else [d.f_beta.weight]
    gate_bias = [] if d.f_beta is None else [d.f_beta.bias]
    w_iz = weight_ih[:, d.embed_dim :]
    coverage = [attention.coverage_weight] if soft and d.coverage else []
    # The controls never attend: their attention weights stay out (no gradient, as in the eager path).
    query, query_bias = ([attention.hidden_proj.weight], [attention.hidden_proj.bias]) if soft else ([], [])
    score = [attention.score.weight, attention.score.bias] if soft else []
    parts = [
        *query, *gate, weight_hh,
        *query_bias, *gate_bias, bias_hh + bias_ih,
        w_iz, *([d.L_z.weight] if d.deep_output else []),
        *score, *coverage,
    ]  # fmt: skip
    attention_dim = attention.hidden_proj.out_features if soft else 0
    word_dim = attention_dim if d.attend_word else 0
    sizes = (attention_dim, gate_dim, word_dim, attention_dim if coverage else 0)
    return torch.cat([p.reshape(-1) for p in parts]), sizes


def prepare(
    decoder: Decoder, lstm: tuple[Tensor, ...], annotations: Tensor
) -> tuple[Tensor, tuple, Tensor, Tensor | None, Tensor, Any]:
    """What every step reads: ``pack_weights``, [W_y; W_ie], deep output's biases, W_a a, the initial state."""
    d = decoder
    weights, sizes = pack_weights(d, lstm)
    word_weights = [lstm[0][:, : d.embed_dim]]
    if sizes[2]:
        word_weights.insert(0, d.attention.word_proj.weight)
    out_bias = d.L_h.bias + d.L_z.bias if d.deep_output else None
    return (
        weights,
        sizes,
        torch.cat(word_weights),
        out_bias,
        d.project(annotations),
        d.init_state(annotations),
    )


def fixed_context(decoder: Decoder, annotations: Tensor) -> Tensor | None:
    """The controls' z_t for every step, (B,D): the mean annotation or zeros; None for soft attention."""
    if decoder.context == "mean":
        return annotations.mean(dim=1)
    if decoder.context == "blind":
        return annotations.new_zeros(annotations.shape[0], annotations.shape[-1])
    return None


def teacher_forced(
    decoder: Decoder,
    annotations: Tensor,
    captions: Tensor,
    teacher_forcing: float,
    step: Cell = cell,
    prologue: Callable[..., tuple] = prepare,
) -> DecoderOutput:
    """``decoder(annotations, captions, teacher_forcing)`` through ``prologue`` and ``step`` (``prepare`` and
    ``cell``, or their compiled forms: ``compile_pass``)."""
    require(0.0 <= teacher_forcing <= 1.0, f"teacher_forcing={teacher_forcing!r} must be in [0, 1]")
    require(
        captions.dim() == 2 and captions.shape[1] >= 2,
        f"captions must be (B,T) with T >= 2 (<start> + a word), got shape {tuple(captions.shape)}",
        DataError,
    )
    check_fusable(decoder)
    d = decoder
    weights, sizes, w_e, out_bias, projected, state = prologue(d, lstm_weights(d), annotations)

    def words_in(emb: Tensor) -> tuple[Tensor, Tensor]:
        """Word terms and deep output's word part (empty without it) for embeddings (..., E)."""
        return emb @ w_e.t(), emb[..., :0] if out_bias is None else emb + out_bias

    def output(h_t: Tensor, part: Tensor) -> Tensor:
        """Eq. 7's L_o input before dropout, for h_t (..., H) and the cell's (..., E) part."""
        return torch.addmm(part, h_t, d.L_h.weight.t()) if d.deep_output else h_t

    batch, steps, num_locations = captions.shape[0], captions.shape[1] - 1, annotations.shape[1]
    h, c = state.h[0], state.c[0]
    coverage = None if state.coverage is None else state.coverage[0]
    if coverage is not None and torch.is_grad_enabled():
        # Later steps' coverage requires grad: so does the first's zeros, or it would compile its own cell.
        coverage.requires_grad_()
    context = fixed_context(d, annotations)
    given = teacher_forcing >= 1.0
    if given:  # every step's word is known: embed and project them all at once
        # Time-major (T,B,...), so each step's slice is contiguous: the same strides whatever the caption
        # length, which the compiled cell is specialised on (batch-major slices would recompile per length).
        all_terms, all_out = words_in(d.embed(captions[:, :-1].t()))
        all_terms, all_out = all_terms.unbind(0), all_out.unbind(0)
    hs, parts, logits, alphas = [], [], [], []
    words = captions[:, 0]
    for t in range(steps):
        if given:
            word_terms, emb_out = all_terms[t], all_out[t]
        else:  # Decoder.forward's scheduled sampling, in its order of random draws
            if t > 0:
                predicted = logits[-1].detach().argmax(dim=-1)
                if teacher_forcing <= 0.0:
                    words = predicted
                else:
                    use_truth = torch.rand(words.shape[0], device=words.device) < teacher_forcing
                    words = torch.where(use_truth, captions[:, t], predicted)
            word_terms, emb_out = words_in(d.embed(words))
        h, c, coverage, alpha, part = step(
            h, c, coverage, word_terms, emb_out, annotations, projected, context, weights, sizes
        )
        alphas.append(alpha)
        if given:
            hs.append(h)
            parts.append(part)
        else:
            logits.append(d.L_o(d.dropout(output(h, part))))
    if given:  # L_h and L_o over all steps at once; dropout step by step, the eager path's draws
        pre = output(torch.cat(hs), torch.cat(parts)).view(steps, batch, -1)
        logits_t = d.L_o(torch.stack([d.dropout(p) for p in pre.unbind(0)], dim=1))
    else:
        logits_t = torch.stack(logits, dim=1)
    if d.context == "soft":
        alphas_t = torch.stack(alphas, dim=1)
    else:  # the controls' uniform alpha, as Decoder.attend returns it
        alphas_t = annotations.new_full((batch, steps, num_locations), 1.0 / num_locations)
    return DecoderOutput(logits=logits_t, alphas=alphas_t)


def compile_pass(
    device: torch.device, step: Callable[..., tuple] = cell
) -> tuple[Callable[..., tuple], Callable[..., tuple]]:
    """``step`` (``cell``, or a step built on it: SCST's ``decode.fast_rollout.policy_step``) and
    ``prepare`` compiled for ``device``; the step runs as a CUDA graph on CUDA (``reduce-overhead``),
    fused kernels elsewhere.

    Static shapes (``dynamic=False``): their shapes are the batch's rows and the model's sizes, not the
    caption length, so a run compiles each once (and once more for a smaller last batch).
    """
    mode = "reduce-overhead" if device.type == "cuda" else None
    compiled = torch.compile(step, mode=mode, dynamic=False, fullgraph=True)
    return compiled, torch.compile(prepare, dynamic=False)
