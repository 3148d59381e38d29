"""Decode a split and score it: text metrics for every dataset, grounding metrics for shapes.

The one evaluation path: the training loop (validation and the final test evaluation) and
evaluate.py both call :func:`evaluate_split` on loaders from ``captioner.data.loaders.build_eval_loader``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocab
from captioner.metrics.text import DEFAULT_METRICS as TEST_METRICS
from captioner.progress import progress as progress_bar
from captioner.runtime.distributed import SINGLE, DistInfo, gather_to_main

# Validation runs every epoch: METEOR (a Java process) is kept for the final test evaluation.
VALIDATION_METRICS = ("bleu", "rouge_l", "cider_d")
__all__ = ["TEST_METRICS", "VALIDATION_METRICS", "SplitResult", "evaluate_split"]


@dataclass
class SplitResult:
    """Predictions and scores of one split (under DDP: scores and every rank's captions on rank 0 only)."""

    metrics: dict[str, float]
    captions: dict[str, list[str]]  # image id -> best caption words
    alphas: dict[str, np.ndarray] = field(default_factory=dict)  # image id -> (T, L) of the best caption
    grid: tuple[int, int] = (0, 0)


@torch.inference_mode()
def evaluate_split(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    vocab: Vocab,
    records: Mapping[str, ImageRecord],
    decode_cfg: Mapping[str, Any],
    device: torch.device,
    dist_info: DistInfo = SINGLE,
    autocast: AbstractContextManager | None = None,
    temperature: float | None = None,
    keep_alphas: int | None = None,
    metrics: tuple[str, ...] = VALIDATION_METRICS,
    desc: str | None = None,
) -> SplitResult:
    """Decode every image of ``loader`` with ``decode_cfg`` and score against all references.

    Grounding metrics are added when the records carry shapes ground truth (``meta["objects"]``).
    Under DDP each rank decodes its shard of the loader; the shards are gathered once, to rank 0,
    which scores them (other ranks return their own shard and no scores). With ``desc``, a
    progress line (bar on a terminal) names the work and its ETA.
    """
    from captioner.decode import decode, hypotheses_to_words
    from captioner.metrics import score_captions

    model.eval()
    kwargs = dict(decode_cfg)
    captions: dict[str, list[str]] = {}
    alphas: dict[str, np.ndarray] = {}
    grid = (0, 0)
    for batch in progress_bar(loader, desc=desc or "", disable=desc is None or not dist_info.is_main):
        with autocast or nullcontext():
            if "features" in batch:  # cached (B, h, w, C) maps of the encoder's frozen prefix
                fmap = batch["features"].to(device, non_blocking=True).float()
                annotations, grid = model.annotate(fmap, features=True)  # the trainable tail, if any
            else:
                annotations, grid = model.encode(batch["images"].to(device, non_blocking=True))
            hyp = decode(model.decoder, annotations.float(), **kwargs, fitted_temperature=temperature)
        words = hypotheses_to_words(hyp, vocab)
        for i, image_id in enumerate(batch["image_ids"]):
            captions[image_id] = words[i]
            if keep_alphas is None or len(alphas) < keep_alphas:
                n = len(words[i])
                alphas[image_id] = hyp.alphas[i, 0, :n].float().cpu().numpy()
    parts = gather_to_main((captions, alphas), dist_info)
    scores: dict[str, float] = {}
    if parts is not None:  # rank 0
        captions = {k: v for c, _ in parts for k, v in c.items()}
        alphas = {k: v for _, a in parts for k, v in a.items()}
        ids = sorted(captions)
        scores = score_captions([captions[i] for i in ids], [records[i].tokens for i in ids], metrics)
        if all("objects" in records[i].meta for i in ids):
            scores.update(grounding_metrics(ids, captions, alphas, grid, records))
    return SplitResult(scores, captions, alphas, grid)


def grounding_metrics(
    ids: list[str],
    captions: Mapping[str, list[str]],
    alphas: Mapping[str, np.ndarray],
    grid: tuple[int, int],
    records: Mapping[str, ImageRecord],
) -> dict[str, float]:
    """Object P/R/F1, exact-scene accuracy and attention pointing for shapes (0-1 scale)."""
    from captioner.metrics.grounding import attention_scores, object_scores

    metas = [records[i].meta for i in ids]
    out = dict(object_scores([captions[i] for i in ids], metas))
    with_alpha = [i for i in ids if i in alphas]
    if with_alpha:
        out.update(
            attention_scores(
                [captions[i] for i in with_alpha],
                [alphas[i] for i in with_alpha],
                grid,
                [records[i].meta for i in with_alpha],
            )
        )
    return out
