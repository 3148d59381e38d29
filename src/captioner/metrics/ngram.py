"""coco-caption's n-gram metrics in Python: BLEU-1..4 (counts from sacrebleu), ROUGE-L, CIDEr-D (0-100)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU

from captioner.errors import ConfigError, DataError
from captioner.metrics.scores import CaptionScores, Tokens, clean_tokens, prepare_captions

# ----------------------------------------------------------------------------------------------- BLEU


def _bleu_from_stats(
    correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray
) -> np.ndarray:
    """coco's BLEU-1..4 from counts: arrays (..., 4) and (...,) -> (..., 4), in [0, 1]."""
    # coco adds tiny/small instead of sacrebleu's "0 if any precision is 0": per-caption BLEU-4 of a
    # 3-word caption is ~3 points in coco, 0 in sacrebleu, so this part is written out to match coco.
    tiny, small = 1e-15, 1e-9
    log_p = np.log((correct + tiny) / (guess + small))
    orders = np.arange(1, correct.shape[-1] + 1)
    bleus = np.exp(np.cumsum(log_p, axis=-1) / orders)
    ratio = (testlen + tiny) / (reflen + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleus * brevity[..., None]


def bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> CaptionScores:
    """BLEU-1..4 as coco-caption computes it (closest reference length), keys ``bleu1..bleu4``."""
    hyps, refs = prepare_captions(hypotheses, references)
    # sacrebleu does the n-gram matching (clipped counts, closest ref length with ties to the shorter,
    # like coco's option="closest"); its public sentence_score gives each caption's counts (effective_order
    # changes only its own score, which we do not read, and keeps it from warning on every sentence).
    scorer = BLEU(tokenize="none", smooth_method="none", force=True, effective_order=True)
    scored = [scorer.sentence_score(" ".join(h), [" ".join(r) for r in rs]) for h, rs in zip(hyps, refs)]
    stats = np.asarray([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in scored], dtype=float)
    testlen, reflen, correct, guess = stats[:, 0], stats[:, 1], stats[:, 2:6], stats[:, 6:10]
    corpus = _bleu_from_stats(correct.sum(0), guess.sum(0), testlen.sum(), reflen.sum()) * 100
    per = _bleu_from_stats(correct, guess, testlen, reflen) * 100
    keys = [f"bleu{k}" for k in range(1, 5)]
    return CaptionScores(
        corpus={k: float(corpus[i]) for i, k in enumerate(keys)},
        per_caption={k: per[:, i].tolist() for i, k in enumerate(keys)},
    )


# -------------------------------------------------------------------------------------------- ROUGE-L


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int ops."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for word in b:
        u = v & masks.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], beta: float = 1.2
) -> CaptionScores:
    """ROUGE-L F-score as coco-caption computes it (beta=1.2), corpus = mean over captions."""
    hyps, refs = prepare_captions(hypotheses, references)
    scores = []
    for hyp, ref_set in zip(hyps, refs):
        if not hyp:
            scores.append(0.0)
            continue
        lcs = [_lcs_length(hyp, r) for r in ref_set]
        # coco takes the best precision and the best recall separately (possibly from different
        # references), not the best per-reference F; kept for equality with published numbers.
        prec = max(m / len(hyp) for m in lcs)
        rec = max(m / len(r) for m, r in zip(lcs, ref_set))
        f = (1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0
        scores.append(f * 100)
    return CaptionScores(corpus={"rouge_l": float(np.mean(scores))}, per_caption={"rouge_l": scores})


# -------------------------------------------------------------------------------------------- CIDEr-D


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def cider_d(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0
) -> CaptionScores:
    """CIDEr-D exactly as coco-caption's ``Cider`` (idf from this set's references), key ``cider_d``."""
    _check_cider(n, sigma)
    hyps, refs = prepare_captions(hypotheses, references)
    ref_counts = [[_ngrams(r, n) for r in ref_set] for ref_set in refs]
    df, log_n_images = cider_document_frequency(ref_counts)
    scores = [
        _cider_score(_cider_vector(_ngrams(h, n), df, log_n_images, n), ref_vectors, sigma)
        for h, ref_vectors in zip(
            hyps, ([_cider_vector(c, df, log_n_images, n) for c in counts] for counts in ref_counts)
        )
    ]
    return CaptionScores(corpus={"cider_d": float(np.mean(scores))}, per_caption={"cider_d": scores})


def _check_cider(n: int, sigma: float) -> None:
    if n < 1 or sigma <= 0:
        raise ConfigError(f"cider_d n={n}, sigma={sigma}: need n >= 1 and sigma > 0 (coco uses n=4, sigma=6)")


def cider_document_frequency(ref_counts: Sequence[Sequence[Counter]]) -> tuple[Counter, float]:
    """In how many images' reference sets each n-gram occurs, and log(number of images)."""
    df: Counter = Counter()
    for counts in ref_counts:
        df.update(set().union(*counts))
    return df, math.log(len(ref_counts))


CiderVector = tuple[list[dict], np.ndarray, int]


def _cider_vector(counts: Counter, df: Counter, log_n_images: float, n: int) -> CiderVector:
    """tf-idf weights per n-gram order, their L2 norms, and coco's length."""
    vec: list[dict] = [{} for _ in range(n)]
    for gram, tf in counts.items():
        vec[len(gram) - 1][gram] = tf * (log_n_images - math.log(max(1.0, df.get(gram, 0))))
    norms = np.sqrt([sum(w * w for w in order.values()) for order in vec])
    # coco's "length" sums bigram counts (its `n == 1` tests the 0-based order), i.e. words - 1.
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, norms, length


def _cider_score(hyp: CiderVector, refs: Sequence[CiderVector], sigma: float) -> float:
    """CIDEr-D of one caption against its references' vectors, on our 0-100 scale."""
    h_vec, h_norm, h_len = hyp
    n = len(h_vec)
    total = np.zeros(n)
    for r_vec, r_norm, r_len in refs:
        val = np.array(
            [
                sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in h_vec[k].items())
                for k in range(n)
            ],
            dtype=float,
        )
        # Cosine similarity; coco leaves the (zero) dot product undivided when a norm is 0.
        denom = h_norm * r_norm
        val = np.divide(val, denom, out=val, where=denom != 0)
        total += val * math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
    # Mean over n-gram orders, mean over references, x10 as coco; x100 for our 0-100 scale.
    return float(total.mean() / len(refs) * 10 * 100)


class CiderD:
    """CIDEr-D with document frequencies fixed once from a corpus (ruotianluo's ``cider`` cache).

    SCST scores thousands of sampled captions per epoch against the training references: the idf
    comes from the whole training set, as in Rennie et al. 2017, not from each minibatch, and each
    image's reference vectors are computed once. ``score`` of a corpus's own references equals
    :func:`cider_d` on that corpus.
    """

    def __init__(self, corpus: dict[str, Sequence[Tokens]], n: int = 4, sigma: float = 6.0):
        _check_cider(n, sigma)
        self.n, self.sigma = n, sigma
        ids = list(corpus)
        _, refs = prepare_captions([[]] * len(ids), [corpus[i] for i in ids])
        ref_counts = [[_ngrams(r, n) for r in ref_set] for ref_set in refs]
        self.df, self.log_n_images = cider_document_frequency(ref_counts)
        self.refs = {
            i: [_cider_vector(c, self.df, self.log_n_images, n) for c in counts]
            for i, counts in zip(ids, ref_counts)
        }

    def score(self, hypotheses: Sequence[Tokens], ids: Sequence[str]) -> list[float]:
        """Per-caption CIDEr-D (0-100) of ``hypotheses[j]`` against the references of image ``ids[j]``."""
        missing = sorted({i for i in ids if i not in self.refs})
        if missing:
            raise DataError(f"CiderD has no references for images {missing[:3]}; build it from their split")
        return [
            _cider_score(
                _cider_vector(_ngrams(clean_tokens(h), self.n), self.df, self.log_n_images, self.n),
                self.refs[i],
                self.sigma,
            )
            for h, i in zip(hypotheses, ids)
        ]
