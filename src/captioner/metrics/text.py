"""Caption metrics by name, as coco-caption (pycocoevalcap) computes them: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE.

Inputs are tokenised words: ``hypotheses[i]`` is one caption, ``references[i]`` its human captions
(any number >= 1). Every score is on a 0-100 scale, corpus-level and per caption. Papers print
coco's BLEU/METEOR/ROUGE-L x100 and its CIDEr (already x10 inside coco) x100 too, e.g. coco's
CIDEr 0.65 is our ``cider_d`` 65.0. The n-gram metrics live in ``ngram``; the Java metrics
(METEOR, SPICE) in ``java``, and they are skipped, with a one-line reason, where Java or their jars
are missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from captioner.errors import ConfigError
from captioner.metrics.java import meteor, meteor_unavailable, spice, spice_unavailable
from captioner.metrics.ngram import bleu, cider_d, rouge_l
from captioner.metrics.scores import CaptionScores, Tokens, prepare_captions

METRICS = ("bleu", "meteor", "rouge_l", "cider_d", "spice")
DEFAULT_METRICS = ("bleu", "meteor", "rouge_l", "cider_d")

_SCORERS = {"bleu": bleu, "meteor": meteor, "rouge_l": rouge_l, "cider_d": cider_d, "spice": spice}


def evaluate_captions(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> CaptionScores:
    """Run the named metrics; Java metrics that cannot run are listed in ``skipped`` with the reason."""
    if isinstance(metrics, str):
        raise ConfigError(f"metrics={metrics!r} must be a list of names, e.g. [{metrics!r}]")
    unknown = [m for m in metrics if m not in _SCORERS]
    if unknown:
        raise ConfigError(f"metrics: unknown {unknown}; choose from {list(METRICS)}")
    hyps, refs = prepare_captions(hypotheses, references)
    corpus: dict[str, float] = {}
    per_caption: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(metrics):
        result = _SCORERS[name](hyps, refs)
        if result is None:
            skipped[name] = (meteor_unavailable if name == "meteor" else spice_unavailable)() or "unavailable"
            continue
        corpus.update(result.corpus)
        per_caption.update(result.per_caption)
    return CaptionScores(corpus, per_caption, skipped)


def score_captions(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Corpus scores (0-100): ``bleu1..bleu4, meteor, rouge_l, cider_d`` (and ``spice`` if asked)."""
    return evaluate_captions(hypotheses, references, metrics).corpus


def per_caption(
    hypotheses: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, float]]:
    """One dict of scores (0-100) per caption, same keys as :func:`score_captions`."""
    return evaluate_captions(hypotheses, references, metrics).rows()
