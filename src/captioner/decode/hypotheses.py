"""What every decoding method returns: ``Hypotheses``, n captions per image, best first."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from captioner.data.vocab import SPECIALS, Vocab


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


def reorder(hyp: Hypotheses, order: Tensor) -> Hypotheses:
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


def hypotheses_to_words(hyp: Hypotheses, vocab: Vocab, keep_unk: bool = False) -> list[list[str]]:
    """The best caption of each image as words, special tokens (and ``<unk>`` unless kept) removed."""
    captions = []
    for ids in hyp.tokens[:, 0].tolist():
        words = vocab.decode(ids)
        captions.append(words if keep_unk else [w for w in words if w not in SPECIALS])
    return captions
