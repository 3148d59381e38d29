"""Caption image files with a loaded checkpoint: n-best captions, attention figures, captions.json.

Used by caption.py. Every file PIL can decode is captioned; every other file is skipped, with one
line naming it and the reason, on stderr and in captions.json's ``skipped`` list.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from captioner.data.transforms import build_eval_transform
from captioner.decode import decode
from captioner.errors import DataError
from captioner.evaluation.checkpoint import check_decode
from captioner.model.load import Loaded
from captioner.runtime.files import open_atomic, write_json_atomic
from captioner.viz import attention_figure


@dataclass
class Captioned:
    """One captioned image: best caption first in ``n_best`` as (words, score)."""

    file: Path
    words: list[str]
    score: float
    n_best: list[tuple[list[str], float]]
    figure: Path | None = None
    panels: int = 0  # word panels drawn in the figure (one per word of the best caption)


class UnreadableImage(DataError):
    """A file PIL cannot decode as an image; ``reason`` says why."""

    def __init__(self, path: Path, reason: str):
        self.reason = reason
        super().__init__(f"{path.name}: {reason}")


@dataclass
class Skipped:
    """A file that was not captioned, and why (``cannot read image: ...``)."""

    file: Path
    reason: str


def find_images(images: str | Path) -> list[Path]:
    """A file, or every file of a folder, sorted by name: whatever PIL cannot open is reported later, by name."""
    path = Path(images)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"images={str(path)!r} does not exist; give an image file or a folder of images")
    # No filter by extension: PIL decides what is an image (GIF, TIFF, ... and misnamed files count).
    found = sorted(p for p in path.iterdir() if p.is_file())
    if not found:
        raise DataError(f"images={str(path)!r} is an empty folder; point at a folder of images")
    return found


def read_image(path: Path) -> Image.Image:
    """Decode an image fully as RGB, rotated upright by its EXIF tag; UnreadableImage when it cannot."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError for truncated data.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = textwrap.shorten(reason, 120, placeholder=" ...")  # at a word boundary, not mid-word
        raise UnreadableImage(path, f"cannot read image: {reason}") from None


@torch.inference_mode()
def caption_image(
    loaded: Loaded, image: Image.Image, decode_cfg: Mapping[str, Any], device: torch.device
) -> tuple[list[tuple[list[str], float]], np.ndarray, tuple[int, int]]:
    """Caption one PIL image: n-best (words, score) and the best caption's alphas (T, L) with their grid."""
    x = build_eval_transform(loaded.image_size)(image).unsqueeze(0).to(device)
    annotations, grid = loaded.model.encode(x)
    hyp = decode(
        loaded.model.decoder, annotations.float(), **dict(decode_cfg), fitted_temperature=loaded.temperature
    )
    n_best = []
    for j in range(hyp.tokens.shape[1]):
        # Words up to <end>, <unk> kept, so word i is the token that alpha row i produced.
        n_best.append((loaded.vocab.decode(hyp.tokens[0, j].tolist()), float(hyp.scores[0, j])))
    best = n_best[0][0]
    alphas = hyp.alphas[0, 0, : len(best)].float().cpu().numpy()
    return n_best, alphas, grid


def caption_files(
    loaded: Loaded,
    files: Sequence[Path],
    decode_cfg: Mapping[str, Any],
    device: torch.device,
    out_dir: Path | None = None,
    figure_size: int = 320,
) -> tuple[list[Captioned], list[Skipped]]:
    """Caption each file (and write its attention figure into ``out_dir``); returns (captioned, skipped)."""
    check_decode(loaded, decode_cfg)
    done: list[Captioned] = []
    skipped: list[Skipped] = []
    for path in files:
        try:
            image = read_image(path)
        except UnreadableImage as err:
            skipped.append(Skipped(path, err.reason))
            continue
        n_best, alphas, grid = caption_image(loaded, image, decode_cfg, device)
        words, score = n_best[0]
        result = Captioned(path, words, score, n_best)
        if out_dir is not None and words:
            shown = image.copy()
            shown.thumbnail((figure_size, figure_size))  # smaller figures; attention is upsampled to it
            result.figure = attention_figure(
                np.asarray(shown), words, alphas, grid, out_dir / f"{path.stem}.png", title=" ".join(words)
            )
            result.panels = len(words)
            _quantize_png(result.figure)
        done.append(result)
    return done, skipped


def _quantize_png(path: Path) -> None:
    """Rewrite a figure as a 256-colour PNG: photo panels compress ~3x smaller, no visible change."""
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    with open_atomic(path) as f:
        small.save(f, format="PNG", optimize=True)


def write_captions(out_dir: Path, done: Sequence[Captioned], skipped: Sequence[Skipped]) -> Path:
    """``captions.json``: every captioned file with its n-best list, and the files skipped with their reason."""
    out = {
        "captions": [
            {
                "file": c.file.name,
                "caption": " ".join(c.words),
                "score": c.score,
                "n_best": [{"caption": " ".join(w), "score": s} for w, s in c.n_best],
                "figure": c.figure.name if c.figure else None,
            }
            for c in done
        ],
        "skipped": [{"file": s.file.name, "reason": s.reason} for s in skipped],
    }
    path = out_dir / "captions.json"
    write_json_atomic(path, out, indent=2)
    return path
