"""Caption metrics: coco-caption-compatible text metrics (grounding metrics live in ``grounding``)."""

from captioner.metrics.java import find_meteor_jar, meteor, meteor_unavailable, spice, spice_unavailable
from captioner.metrics.ngram import CiderD, bleu, cider_d, rouge_l
from captioner.metrics.scores import CaptionScores
from captioner.metrics.text import DEFAULT_METRICS, METRICS, evaluate_captions, per_caption, score_captions

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "CaptionScores",
    "CiderD",
    "bleu",
    "cider_d",
    "evaluate_captions",
    "find_meteor_jar",
    "meteor",
    "meteor_unavailable",
    "per_caption",
    "rouge_l",
    "score_captions",
    "spice",
    "spice_unavailable",
]
