"""Attention figures like the paper's Fig. 2/3: the image, then one panel per word with its map overlaid."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from captioner.runtime.files import open_atomic


def upsample_alpha(
    alpha: torch.Tensor | np.ndarray, grid: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """One word's attention over ``grid`` (h*w values) -> an (H, W) map at image ``size`` (H, W)."""
    a = torch.as_tensor(np.asarray(alpha, dtype=np.float32)).reshape(1, 1, *grid)
    up = F.interpolate(a, size=size, mode="bilinear", align_corners=False)[0, 0]
    return up.numpy()


def attention_figure(
    image: np.ndarray,
    words: Sequence[str],
    alphas: torch.Tensor | np.ndarray,
    grid: tuple[int, int],
    path: str | Path,
    title: str | None = None,
    columns: int = 5,
) -> Path:
    """Write a PNG: the image, then one panel per word (``len(alphas) == len(words)``) with its map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3:  # (3, H, W) tensor layout
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    alphas = np.asarray(alphas, dtype=np.float32)[: len(words)]
    panels = 1 + len(words)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title(textwrap.fill(title or "input", 34), fontsize=8)
    h, w = image.shape[:2]
    for i, (word, alpha) in enumerate(zip(words, alphas, strict=True), start=1):
        ax = axes.flat[i]
        ax.imshow(image)
        att = upsample_alpha(alpha, grid, (h, w))
        ax.imshow(att / max(att.max(), 1e-8), cmap="gray", alpha=0.6, extent=(0, w, h, 0))
        ax.set_title(word, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with open_atomic(path) as f:  # a full disk: one line naming the file, no half-written PNG
            fig.savefig(f, format="png", dpi=80)
    finally:
        plt.close(fig)
    return path
