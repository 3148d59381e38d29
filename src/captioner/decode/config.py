"""The ``decode`` config group's schema: which method and its options, each checked with a one-line error."""

from __future__ import annotations

import math
from dataclasses import dataclass

from captioner.errors import require

METHODS = ("greedy", "beam", "sample")


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
