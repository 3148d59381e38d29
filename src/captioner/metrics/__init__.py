"""Caption metrics: coco-caption-compatible text metrics (grounding metrics live in ``grounding``)."""

from captioner.metrics.text import (
    DEFAULT_METRICS,
    METRICS,
    CaptionScores,
    CiderD,
    bleu,
    cider_d,
    evaluate_captions,
    find_meteor_jar,
    meteor,
    meteor_unavailable,
    per_caption,
    rouge_l,
    score_captions,
    spice,
    spice_unavailable,
)

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
