"""What every text metric takes and returns: token lists in (special tokens stripped), ``CaptionScores`` out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from captioner.data.vocab import END, PAD, START
from captioner.errors import DataError

Tokens = Sequence[str]
_DROP = frozenset((START, END, PAD))


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores, per-caption scores (same keys, one value per caption) and skipped metrics."""

    corpus: dict[str, float]
    per_caption: dict[str, list[float]]
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float]]:
        """Per-caption scores as one dict per caption."""
        n = len(next(iter(self.per_caption.values()), []))
        return [{k: v[i] for k, v in self.per_caption.items()} for i in range(n)]


def clean_tokens(tokens: Tokens) -> list[str]:
    """The caption's words without <start>, <end> and <pad>."""
    # Callers should strip special tokens already; a stray <end> would otherwise count as a word.
    return [t for t in tokens if t not in _DROP]


def prepare_captions(
    hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Validate shapes, strip special tokens and drop empty references."""
    if isinstance(hypotheses, str) or (hypotheses and isinstance(hypotheses[0], str)):
        raise DataError(
            "metrics hypotheses must be token lists (list[list[str]]); tokenize the captions first"
        )
    if len(hypotheses) != len(references):
        raise DataError(
            f"metrics got {len(hypotheses)} hypotheses but {len(references)} reference sets; pass one set per caption"
        )
    if not hypotheses:
        raise DataError("metrics got no captions to score; pass at least one hypothesis")
    hyps = [clean_tokens(h) for h in hypotheses]
    refs = []
    for i, ref_set in enumerate(references):
        # An empty reference carries no words; coco would still count its length 0 in BLEU's brevity term.
        cleaned = [c for c in (clean_tokens(r) for r in ref_set) if c]
        if not cleaned:
            raise DataError(
                f"metrics: caption {i} has no non-empty reference; every image needs >= 1 reference"
            )
        refs.append(cleaned)
    return hyps, refs
