"""Caption decoding: greedy, batched beam search and sampling, all returning one ``Hypotheses``.

Every method drives ``Decoder.step`` one word at a time from ``<start>`` and never emits ``<pad>``
or ``<start>`` (neither is ever a training target). ``temperature`` divides the logits in every
method, so a calibrated temperature (Guo et al. 2017) is applied the same way everywhere. Reported
log-probabilities are those of the temperature-scaled model over the full vocabulary, so scores of
different methods are comparable; bans, top-k and top-p only restrict which words can be chosen.

``max_len`` bounds the number of generated tokens including ``<end>``; a caption that reaches it
unfinished is returned as it is (no ``<end>``). Hypotheses are sorted best first.

One module per job: ``config`` (the ``decode`` group's schema), ``hypotheses`` (the result type),
``sampling`` (greedy and sampling), ``beam`` (batched beam search and its rescoring), ``policy``
(sampling with gradients, for REINFORCE) and ``common`` (the start state, bans, log-probabilities).
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor

from captioner.decode.beam import beam_search
from captioner.decode.config import METHODS, DecodeConfig
from captioner.decode.hypotheses import Hypotheses, hypotheses_to_words
from captioner.decode.policy import Rollout, sample_with_grad
from captioner.decode.sampling import greedy, sample
from captioner.errors import require
from captioner.model.decoder import Decoder

__all__ = [
    "METHODS",
    "DecodeConfig",
    "Hypotheses",
    "Rollout",
    "beam_search",
    "decode",
    "greedy",
    "hypotheses_to_words",
    "sample",
    "sample_with_grad",
]


def decode(
    decoder: Decoder,
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
