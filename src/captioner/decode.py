"""Caption decoding: greedy, batched beam search and sampling, all returning one ``Hypotheses``.

Every method drives ``Decoder.step`` one word at a time from ``<start>`` and never emits ``<pad>``
or ``<start>`` (neither is ever a training target). ``temperature`` divides the logits in every
method, so a calibrated temperature (Guo et al. 2017) is applied the same way everywhere. Reported
log-probabilities are those of the temperature-scaled model over the full vocabulary, so scores of
different methods are comparable; bans, top-k and top-p only restrict which words can be chosen.

``max_len`` bounds the number of generated tokens including ``<end>``; a caption that reaches it
unfinished is returned as it is (no ``<end>``). Hypotheses are sorted best first.

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
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from captioner.data.vocab import END_ID, PAD_ID, SPECIALS, START_ID, UNK_ID, Vocab
from captioner.errors import require
from captioner.model import fast_decode
from captioner.model.fast_decode import Folded
from captioner.model.state import DecoderState

METHODS = ("greedy", "beam", "sample")


@dataclass
class Hypotheses:
    """Decoded captions for B images, n per image, best first.

    tokens (B, n, T) long: word ids without ``<start>``, ending with ``<end>`` when finished, padded
    with ``<pad>``; scores (B, n): final (beam: rescored) scores; log_probs (B, n, T): per-token
    log-probabilities (0 at padding); alphas (B, n, T, L): the attention map that produced each
    word (0 at padding); lengths (B, n): tokens per caption including ``<end>``.
    """

    tokens: Tensor
    scores: Tensor
    log_probs: Tensor
    alphas: Tensor
    lengths: Tensor


@dataclass
class DecodeConfig:
    """The flat ``conf/decode/*.yaml`` schema; every key maps 1:1 to a field and is checked here.

    ``n_best`` is the number of captions returned per image (beam: best of the k beams; sample: the
    number of draws). ``calibrated=true`` multiplies ``temperature`` by the temperature fitted on
    the validation set, which the caller passes to ``decode(..., fitted_temperature=...)``.
    """

    method: str = "beam"  # beam | greedy | sample
    k: int = 3  # beam width (beam only)
    n_best: int = 1  # captions returned per image (<= k for beam; draws for sample)
    max_len: int = 30  # most tokens per caption, <end> included
    ban_unk: bool = False  # never emit <unk>
    length_norm: float = 0.0  # beam rescoring: sum(log p) / length**length_norm (0 = off)
    word_reward: float = 0.0  # beam rescoring: + word_reward per token
    adaptive_reward: float = 0.0  # beam rescoring: each token's cost refunded up to this many nats (0 = off)
    temperature: float = 1.0  # logits / temperature (changes scores, not the argmax)
    top_k: int = 0  # sampling only: keep the k most likely words (0 = all)
    top_p: float = 1.0  # sampling only: nucleus mass
    calibrated: bool = False  # multiply temperature by the one fitted on val (Guo et al. 2017)

    def __post_init__(self) -> None:
        require(
            self.method in METHODS,
            f"decode.method={self.method!r} is unknown; use one of {', '.join(METHODS)}",
        )
        require(self.k >= 1, f"decode.k={self.k} must be >= 1 (the beam width; k=1 is greedy search)")
        require(self.n_best >= 1, f"decode.n_best={self.n_best} must be >= 1 (captions per image)")
        require(
            self.method != "beam" or self.n_best <= self.k,
            f"decode.n_best={self.n_best} exceeds decode.k={self.k}; beam search keeps only k "
            "hypotheses: raise k or lower n_best",
        )
        require(
            self.method != "greedy" or self.n_best == 1,
            f"decode.n_best={self.n_best} needs method=beam or sample; greedy returns one caption per image",
        )
        require(self.max_len >= 1, f"decode.max_len={self.max_len} must be >= 1 (tokens including <end>)")
        require(
            self.temperature > 0 and math.isfinite(self.temperature),
            f"decode.temperature={self.temperature} must be a finite number > 0 (1.0 = the model as trained)",
        )
        require(self.top_k >= 0, f"decode.top_k={self.top_k} must be >= 0 (0 = off)")
        require(0 < self.top_p <= 1, f"decode.top_p={self.top_p} must be in (0, 1] (1.0 = off)")
        require(self.length_norm >= 0, f"decode.length_norm={self.length_norm} must be >= 0 (0 = off)")
        require(
            self.adaptive_reward >= 0,
            f"decode.adaptive_reward={self.adaptive_reward} must be >= 0 (nats refunded per word; 0 = off)",
        )
        require(math.isfinite(self.word_reward), f"decode.word_reward={self.word_reward} must be finite")


def decode(
    decoder: nn.Module,
    annotations: Tensor,
    method: str,
    *,
    fitted_temperature: float | None = None,
    generator: torch.Generator | None = None,
    **kwargs: object,
) -> Hypotheses:
    """Decode (B, L, D) annotations with the method and flat options of a ``DecodeConfig``."""
    known = {f.name for f in fields(DecodeConfig)} - {"method"}
    unknown = sorted(set(kwargs) - known)
    require(not unknown, f"decode options {unknown} are unknown; valid keys: {', '.join(sorted(known))}")
    cfg = DecodeConfig(method=method, **kwargs)  # type: ignore[arg-type]
    temperature = cfg.temperature
    if cfg.calibrated:
        require(
            fitted_temperature is not None,
            "decode.calibrated=true needs a fitted temperature; run calibration first or set decode.calibrated=false",
        )
        temperature *= float(fitted_temperature)  # type: ignore[arg-type]
    if cfg.method == "greedy":
        return greedy(decoder, annotations, cfg.max_len, cfg.ban_unk, temperature)
    if cfg.method == "beam":
        return beam_search(
            decoder,
            annotations,
            cfg.k,
            cfg.n_best,
            cfg.max_len,
            cfg.ban_unk,
            cfg.length_norm,
            cfg.word_reward,
            cfg.adaptive_reward,
            temperature,
        )
    return sample(
        decoder,
        annotations,
        cfg.n_best,
        temperature,
        cfg.top_k,
        cfg.top_p,
        cfg.max_len,
        cfg.ban_unk,
        generator,
    )


def greedy(
    decoder: nn.Module,
    annotations: Tensor,
    max_len: int = 30,
    ban_unk: bool = False,
    temperature: float = 1.0,
) -> Hypotheses:
    """The most likely word at every step (n=1); score = summed log-probability."""
    DecodeConfig(method="greedy", max_len=max_len, ban_unk=ban_unk, temperature=temperature)
    return _rollout(decoder, annotations, 1, max_len, ban_unk, temperature, lambda logp: logp.argmax(-1))


def sample(
    decoder: nn.Module,
    annotations: Tensor,
    n: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_len: int = 30,
    ban_unk: bool = False,
    generator: torch.Generator | None = None,
) -> Hypotheses:
    """n captions per image drawn word by word, optionally from the top-k / nucleus (top-p) words."""
    DecodeConfig(
        method="sample", n_best=n, temperature=temperature, top_k=top_k, top_p=top_p, max_len=max_len
    )

    def draw(logp: Tensor) -> Tensor:
        logp = _top_k_top_p(logp, top_k, top_p)
        return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)

    return _rollout(decoder, annotations, n, max_len, ban_unk, temperature, draw)


def beam_search(
    decoder: nn.Module,
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
    banned = _banned(ban_unk)
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


@dataclass
class Rollout:
    """Sampled captions whose log-probabilities carry gradients (policy-gradient training, e.g. SCST).

    tokens (B, n, T) as in ``Hypotheses``; log_probs (B, n, T): log p(w_t) of each sampled word, plus
    log p(s_t) of each sampled location with hard attention, 0 at padding; mask (B, n, T): the real
    tokens (``<end>`` included); entropy (B, n, T): the word distribution's entropy (detached, for logs).
    """

    tokens: Tensor
    log_probs: Tensor
    mask: Tensor
    entropy: Tensor


def sample_with_grad(
    decoder: nn.Module, annotations: Tensor, n: int = 1, max_len: int = 30, temperature: float = 1.0
) -> Rollout:
    """n captions per image sampled in the decoder's current mode (train: dropout, hard locations sampled),
    keeping the graph, so ``-(reward * log_probs).sum()`` is the REINFORCE loss (Williams 1992).

    A sample that has drawn ``<end>`` leaves the computation (its rows are dropped from the state), so
    the steps and the backward pass cost the samples' own lengths, not the batch's longest one each.
    """
    DecodeConfig(method="sample", n_best=n, temperature=temperature, max_len=max_len)
    projected, state = _prepare(decoder, annotations, n)
    batch, device = annotations.shape[0], annotations.device
    # One row per sample (the n copies of an image no longer consecutive once rows drop out).
    annotations, projected = annotations.repeat_interleave(n, 0), projected.repeat_interleave(n, 0)
    banned = torch.tensor(_banned(False), device=device)
    rows = batch * n
    active = torch.arange(rows, device=device)  # the rows still sampling, in row order
    words = torch.full((rows,), START_ID, dtype=torch.long, device=device)
    tokens, log_probs, masks, entropies = [], [], [], []
    for _ in range(max_len):
        logits, _, state, locations = decoder.step_locations(words, state, annotations, projected)
        # The policy is the distribution the words are drawn from: banned words masked out of place
        # (autograd needs log_softmax's output unchanged), the rest renormalised.
        logp = torch.log_softmax((logits / temperature).index_fill(-1, banned, -math.inf), dim=-1)
        words = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        word_logp = logp.gather(1, words[:, None]).squeeze(1)
        if locations is not None:  # the location is part of the sampled action (hard attention)
            word_logp = word_logp + locations.log_prob
        p = logp.detach().exp()
        entropy = -(p * logp.detach().masked_fill(p == 0, 0.0)).sum(-1)
        # Back to all rows: finished ones hold <pad>, log p 0 (no gradient), mask False.
        tokens.append(words.new_full((rows,), PAD_ID).index_copy(0, active, words))
        log_probs.append(word_logp.new_zeros(rows).index_copy(0, active, word_logp))
        masks.append(torch.zeros(rows, dtype=torch.bool, device=device).index_fill(0, active, True))
        entropies.append(entropy.new_zeros(rows).index_copy(0, active, entropy))
        going = words != END_ID
        if not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            active, words, state = active[keep], words[keep], state.select(keep)
            annotations, projected = annotations[keep], projected[keep]

    def stack(x: list[Tensor]) -> Tensor:
        return torch.stack(x, 1).view(batch, n, -1)

    return Rollout(stack(tokens), stack(log_probs), stack(masks), stack(entropies))


def hypotheses_to_words(hyp: Hypotheses, vocab: Vocab, keep_unk: bool = False) -> list[list[str]]:
    """The best caption of each image as words, special tokens (and ``<unk>`` unless kept) removed."""
    captions = []
    for ids in hyp.tokens[:, 0].tolist():
        words = vocab.decode(ids)
        captions.append(words if keep_unk else [w for w in words if w not in SPECIALS])
    return captions


# --- internals ---------------------------------------------------------------------------------


def _banned(ban_unk: bool) -> list[int]:
    return [PAD_ID, START_ID, UNK_ID] if ban_unk else [PAD_ID, START_ID]


def _log_probs(logits: Tensor, temperature: float, banned: list[int]) -> Tensor:
    """Temperature-scaled log-probabilities over the full vocabulary, banned words set to -inf."""
    # x / 1.0 == x exactly, so skipping the division at temperature 1 changes no number.
    logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    logp[:, banned] = -math.inf
    return logp


def _top_k_top_p(logp: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set to -inf every word outside the top-k and outside the nucleus (smallest set with mass >= p)."""
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, -math.inf)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_logp.exp()
        mass_before = probs.cumsum(-1) - probs  # the most likely word has 0 mass before it: always kept
        # Mass is relative to the words still allowed (bans and top-k removed some).
        drop_sorted = mass_before >= top_p * probs.sum(-1, keepdim=True)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, -math.inf)
    return logp


def _prepare(
    decoder: nn.Module, annotations: Tensor, copies: int, fold: bool = False
) -> tuple[Tensor | Folded, DecoderState]:
    """The annotations' attention projection (one row per image) and the initial LSTM state, each
    state row repeated ``copies`` times: the copies share the image's annotations in ``Decoder.step``.

    ``fold`` (beams) folds the context's weights into the projection where that is cheaper
    (``fast_decode.project``): the same numbers up to rounding, fewer FLOPs per step.
    """
    require(
        annotations.dim() == 3 and annotations.shape[-1] == decoder.encoder_dim,
        f"decode annotations shape {tuple(annotations.shape)} must be (B, L, {decoder.encoder_dim}); "
        "flatten the encoder map with Captioner.encode first",
    )
    # Once per image, not once per beam.
    projected = fast_decode.project(decoder, annotations) if fold else decoder.project(annotations)
    state = decoder.init_state(annotations)
    if copies > 1:
        state = state.repeat(copies)
    return projected, state


@torch.inference_mode()
def _rollout(
    decoder: nn.Module,
    annotations: Tensor,
    n: int,
    max_len: int,
    ban_unk: bool,
    temperature: float,
    choose: Callable[[Tensor], Tensor],
) -> Hypotheses:
    """Decode B*n independent rows, ``choose`` picking each next word from the log-probs."""
    projected, state = _prepare(decoder, annotations, n)
    banned = _banned(ban_unk)
    rows = annotations.shape[0] * n
    words = torch.full((rows,), START_ID, dtype=torch.long, device=annotations.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=annotations.device)
    tokens, log_probs, alphas = [], [], []
    for _ in range(max_len):
        logits, alpha, state = decoder.step(words, state, annotations, projected)
        logp = _log_probs(logits, temperature, banned)
        words = choose(logp).masked_fill(finished, PAD_ID)
        tokens.append(words)
        log_probs.append(logp.gather(1, words[:, None]).squeeze(1).masked_fill(finished, 0.0))
        alphas.append(alpha.masked_fill(finished[:, None], 0.0))
        finished = finished | (words == END_ID)
        if bool(finished.all()):
            break
    batch = annotations.shape[0]
    tokens_t = torch.stack(tokens, 1).view(batch, n, -1)
    log_probs_t = torch.stack(log_probs, 1).view(batch, n, -1)
    alphas_t = torch.stack(alphas, 1).view(batch, n, len(tokens), -1)
    scores = log_probs_t.sum(-1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return _reorder(Hypotheses(tokens_t, scores, log_probs_t, alphas_t, (tokens_t != PAD_ID).sum(-1)), order)


@torch.inference_mode()
def _beam_search(
    decoder: nn.Module,
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
    # k > 1: fold the context's projections per image (k=1 stays the greedy computation exactly).
    projected, state = _prepare(decoder, annotations, 1, fold=k > 1)
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
        logits, alpha, state = decoder.step(words, state, annotations, projected)
        logp = _log_probs(logits, temperature, banned).view(n_live, beams, vocab_size)
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
    tokens, log_probs, alphas = [], [], []
    for word, parent, word_logp, word_alpha in reversed(history):
        tokens.append(word.gather(1, beam))
        log_probs.append(word_logp.gather(1, beam))
        alphas.append(word_alpha.gather(1, beam[..., None].expand(-1, -1, num_locations)))
        beam = parent.gather(1, beam)
    tokens_t = torch.stack(tokens[::-1], 2)
    log_probs_t = torch.stack(log_probs[::-1], 2)
    alphas_t = torch.stack(alphas[::-1], 2)
    lengths = (tokens_t != PAD_ID).sum(-1)

    rescored = final_scores / lengths.to(dtype) ** length_norm + word_reward * lengths
    if adaptive_reward > 0:
        rescored = rescored + (-log_probs_t).clamp(max=adaptive_reward).sum(-1)
    # Beams arrive sorted by summed log-prob; a stable sort keeps that order among rescoring ties.
    order = rescored.argsort(dim=1, descending=True, stable=True)[:, :n_best]
    return _reorder(Hypotheses(tokens_t, rescored, log_probs_t, alphas_t, lengths), order)


def _reorder(hyp: Hypotheses, order: Tensor) -> Hypotheses:
    """Select and reorder the n hypotheses of each image by ``order`` (B, n')."""

    def pick(x: Tensor) -> Tensor:
        index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
        return x.gather(1, index)

    tokens = pick(hyp.tokens)
    # Drop trailing all-padding steps left by hypotheses that were not selected.
    steps = max(int(pick(hyp.lengths).max()), 1)
    return Hypotheses(
        tokens[:, :, :steps],
        pick(hyp.scores),
        pick(hyp.log_probs)[:, :, :steps],
        pick(hyp.alphas)[:, :, :steps],
        pick(hyp.lengths),
    )
