"""Evaluation outputs: the metrics table, metrics.json and COCO-results caption files, and the
generated-vs-reference lines printed at the end of a training run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from captioner.data.records import ImageRecord
from captioner.evaluation.core import SplitResult
from captioner.runtime.files import write_json_atomic

# Columns of the evaluation table, in order; a metric a split did not compute is left out.
TABLE_COLUMNS = (
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "meteor",
    "rouge_l",
    "cider_d",
    "object_precision",
    "object_recall",
    "object_f1",
    "exact_scene",
    "pointing_accuracy",
    "attention_mass",
)


def metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Rows = splits, columns = BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and grounding metrics (when present)."""
    columns = [c for c in TABLE_COLUMNS if any(c in m for m in metrics.values())]
    width = max([5, *(len(s) for s in metrics)])
    lines = [f"{'split':<{width}}  " + "  ".join(f"{c:>{max(len(c), 7)}}" for c in columns)]
    for split, m in metrics.items():
        cells = []
        for c in columns:
            v = m.get(c)
            # Text metrics are on a 0-100 scale, grounding metrics on 0-1.
            text = "-" if v is None else f"{v:.2f}" if c in TABLE_COLUMNS[:7] else f"{v:.3f}"
            cells.append(f"{text:>{max(len(c), 7)}}")
        lines.append(f"{split:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def write_results(out_dir: Path, results: Mapping[str, SplitResult]) -> list[Path]:
    """``metrics.json`` ({split: metrics}) and COCO-results ``captions_<split>.json`` files; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {split: _json_safe(r.metrics) for split, r in results.items()}
    paths = [out_dir / "metrics.json"]
    write_json_atomic(paths[0], metrics, indent=2)
    for split, r in results.items():
        coco = [{"image_id": i, "caption": " ".join(r.captions[i])} for i in sorted(r.captions)]
        paths.append(out_dir / f"captions_{split}.json")
        write_json_atomic(paths[-1], coco, indent=1)
    return paths


def _json_safe(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: metrics undefined on a split (no objects mentioned) are written as null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def sample_lines(result: SplitResult, records: Mapping[str, ImageRecord], n: int = 3) -> list[str]:
    """``<id>  gen: <caption>  | ref: <first reference>`` for the first ``n`` images, so a reader can judge a caption."""
    lines = []
    for image_id in sorted(result.captions)[:n]:
        generated = " ".join(result.captions[image_id]) or "(empty)"
        reference = " ".join(records[image_id].tokens[0]) if records[image_id].tokens else "(none)"
        lines.append(f"{image_id}  gen: {generated}  | ref: {reference}")
    return lines
