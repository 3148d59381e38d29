"""Grounding metrics for the shapes benchmark: were the objects named right, and did attention look at them?

Object scores match predicted and true objects on (colour, shape): a multiset match, so "two green
squares" must name two. Size is scored separately as attribute accuracy over matched objects whose
size the caption states (a caption may leave size out, as many references do); exact-scene accuracy
asks for every object right, nothing extra, and no stated size wrong.

Attention scores look at the "object words" of a generated caption: the colour word and shape noun
of each phrase that matches ground-truth objects (via ``shapes_language.match_objects``). Each attention cell
spreads its weight uniformly over the image pixels it covers (nearest upsampling), so:

* pointing: the peak cell overlaps a named object's box (on a coarse grid a cell is the finest
  place attention can point to; ties go to the first cell); ``pointing_chance`` is the same
  for a uniformly random cell;
* mass: the share of the word's attention that falls inside the named objects' boxes.

Undefined averages (no predicted object, no object word) are NaN, never a flattering 0 or 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from captioner.data.shapes_language import match_objects, parse_caption, scene_from_meta
from captioner.errors import DataError

Key = tuple[str | None, str]


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _size_tally(pred: list[str | None], true: list[str]) -> tuple[int, int]:
    """(right, wrong) stated sizes among matched objects of one (colour, shape), matched at best."""
    matched = min(len(pred), len(true))
    right = sum(min(pred.count(s), true.count(s)) for s in set(true))
    unstated = pred.count(None)
    wrong = max(0, matched - right - unstated)
    return right, wrong


def object_scores(pred_tokens_list: Sequence[Sequence[str]], metas: Sequence[dict]) -> dict[str, float]:
    """Micro-averaged object precision/recall/F1, size accuracy and exact-scene accuracy (0-1)."""
    if len(pred_tokens_list) != len(metas):
        raise DataError(f"object_scores got {len(pred_tokens_list)} captions for {len(metas)} images")
    tp = n_pred = n_true = size_right = size_wrong = exact = 0
    for tokens, meta in zip(pred_tokens_list, metas):
        pred_sizes: dict[Key, list[str | None]] = {}
        for p in parse_caption(tokens):
            pred_sizes.setdefault((p.color, p.shape), []).extend([p.size] * p.count)
        true_sizes: dict[Key, list[str]] = {}
        for o in scene_from_meta(meta):
            true_sizes.setdefault((o.color, o.shape), []).append(o.size)
        pred = Counter({k: len(v) for k, v in pred_sizes.items()})
        true = Counter({k: len(v) for k, v in true_sizes.items()})
        tp += sum((pred & true).values())
        n_pred += sum(pred.values())
        n_true += sum(true.values())
        wrong_here = 0
        for key in pred.keys() & true.keys():
            right, wrong = _size_tally(pred_sizes[key], true_sizes[key])
            size_right += right
            wrong_here += wrong
        size_wrong += wrong_here
        exact += int(pred == true and wrong_here == 0)
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_true)
    f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    return {
        "object_precision": precision,
        "object_recall": recall,
        "object_f1": f1,
        "size_accuracy": _ratio(size_right, size_right + size_wrong),
        "exact_scene": _ratio(exact, len(metas)),
    }


@lru_cache(maxsize=16)
def _cell_index(height: int, width: int, grid_h: int, grid_w: int) -> np.ndarray:
    """(H, W) map from image pixel to the flat index of the attention cell covering it."""
    rows = np.arange(height) * grid_h // height
    cols = np.arange(width) * grid_w // width
    return rows[:, None] * grid_w + cols[None, :]


def _coverage(
    boxes: Sequence[Sequence[float]], height: int, width: int, grid_hw: tuple[int, int]
) -> np.ndarray:
    """(h*w,) fraction of each cell's pixels (centres) inside the union of ``boxes``."""
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    cells = _cell_index(height, width, *grid_hw).ravel()
    n = grid_hw[0] * grid_hw[1]
    return np.bincount(cells, weights=inside.ravel(), minlength=n) / np.bincount(cells, minlength=n)


def _as_array(alphas) -> np.ndarray:
    if hasattr(alphas, "detach"):  # a torch tensor, possibly on GPU or in bf16
        alphas = alphas.detach().float().cpu().numpy()
    return np.asarray(alphas, dtype=np.float64)


def attention_scores(
    pred_tokens_list: Sequence[Sequence[str]],
    alphas_list: Sequence,
    grid_hw: tuple[int, int],
    metas: Sequence[dict],
) -> dict[str, float]:
    """Pointing accuracy and attention mass inside the box, over the object words of each caption.

    ``alphas_list[i]`` is (T, h*w): row t is the attention while generating word t of caption i.
    """
    if not len(pred_tokens_list) == len(alphas_list) == len(metas):
        raise DataError(
            f"attention_scores got {len(pred_tokens_list)} captions, {len(alphas_list)} attention maps "
            f"and {len(metas)} images; pass one of each per image"
        )
    grid_h, grid_w = (int(v) for v in grid_hw)
    hits, masses, chances = [], [], []
    for tokens, alphas, meta in zip(pred_tokens_list, alphas_list, metas):
        alphas = _as_array(alphas)
        if alphas.ndim != 2 or alphas.shape[1] != grid_h * grid_w or alphas.shape[0] < len(tokens):
            raise DataError(
                f"attention map of shape {alphas.shape} does not fit {len(tokens)} words on a "
                f"{grid_h}x{grid_w} grid; pass (T >= words, {grid_h * grid_w}) per caption"
            )
        width, height = meta["image_size"]
        scene = scene_from_meta(meta)
        parsed = parse_caption(tokens)
        for phrase, matched in zip(parsed, match_objects(parsed, scene)):
            if not matched:
                continue
            cover = _coverage([scene[k].box for k in matched], height, width, (grid_h, grid_w))
            for pos in (phrase.color_pos, phrase.shape_pos):
                if pos is None:
                    continue
                alpha = alphas[pos]
                hits.append(cover[int(np.argmax(alpha))] > 0)
                masses.append(float(alpha @ cover) / max(float(alpha.sum()), 1e-12))
                chances.append(float(np.mean(cover > 0)))
    return {
        "pointing_accuracy": float(np.mean(hits)) if hits else math.nan,
        "attention_mass": float(np.mean(masses)) if masses else math.nan,
        "pointing_chance": float(np.mean(chances)) if chances else math.nan,
        "object_words": float(len(hits)),
    }
