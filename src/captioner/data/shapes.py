"""The generated "shapes" benchmark: scenes of coloured shapes with exact ground truth.

Photo datasets cannot tell us whether each object was named right or whether attention looked at
it; here every image comes with its objects (shape, colour, size, box), and every reference caption
with the token positions that name each object. This module renders the scenes and writes them as a
prepared dataset folder; their words, caption grammar and parser are ``captioner.data.shapes_language``.

Compositional generalisation: a few colour-shape pairs (``novel_pairs``, ~10%, fixed by the seed)
never occur in train/val/test; every ``test_novel`` image contains at least one of them.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.data.annotations import write_annotations
from captioner.data.records import (
    FORMAT_VERSION,
    MANIFEST,
    VOCAB,
    ImageRecord,
    content_hash,
    write_json_atomic,
)
from captioner.data.shapes_language import COLORS, SHAPES, SIZES, draw_captions
from captioner.data.store import ImageStoreWriter
from captioner.data.vocab import Vocab, tokenize
from captioner.errors import DataError, require

BACKGROUNDS = ("plain", "gradient", "stripes", "noise", "textured")
SPLIT_ORDER = ("train", "val", "test", "test_novel")
MAX_OBJECTS = 6
NOVEL_FRACTION = 0.1
JPEG_QUALITY = 95

_RADIUS = {"small": (0.065, 0.08), "large": (0.12, 0.15)}  # footprint half-side, fraction of image side
_DUPLICATE_P = 0.15  # chance a new object repeats an existing colour-shape pair, so counts occur


# ----------------------------------------------------------------------------- rendering


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices (all within distance ``r`` of the centre, so they fit the footprint)."""

    def ring_of(k: int, radii: Sequence[float], phase: float) -> list[tuple[float, float]]:
        return [
            (
                radii[i % len(radii)] * math.cos(phase + 2 * math.pi * i / k),
                radii[i % len(radii)] * math.sin(phase + 2 * math.pi * i / k),
            )
            for i in range(k)
        ]

    up = -math.pi / 2
    if shape == "square":
        pts = ring_of(4, [r], math.pi / 4)
    elif shape == "triangle":
        pts = ring_of(3, [r], up)
    elif shape == "star":
        pts = ring_of(10, [r, 0.45 * r], up)
    elif shape == "hexagon":
        pts = ring_of(6, [r], 0.0)
    elif shape == "diamond":  # taller than wide, so it never looks like a rotated square
        pts = [(0, -r), (0.62 * r, 0), (0, r), (-0.62 * r, 0)]
    elif shape == "cross":
        a, b = 0.32 * r, 0.95 * r
        pts = [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    else:
        raise ValueError(shape)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone colour: backgrounds never look like one of ``COLORS``."""
    return rng.uniform(85, 170) + rng.uniform(-18, 18, size=3)


def _background(rng: np.random.Generator, side: int, kind: str) -> np.ndarray:
    """(side, side, 3) float image: plain, gradient, stripes or low-frequency noise, plus pixel noise."""
    c1, c2 = _muted(rng), _muted(rng)
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side
    theta = rng.uniform(0, math.pi)
    proj = grid[None, :] * math.cos(theta) + grid[:, None] * math.sin(theta)
    if kind == "plain":
        img = np.broadcast_to(c1, (side, side, 3)).astype(np.float32)
    elif kind == "gradient":
        t = (proj - proj.min()) / (proj.max() - proj.min())
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(3, 10) * proj + rng.uniform(0, 2 * math.pi))
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # smooth blotches: a coarse random grid of muted colours, upsampled
        coarse = np.stack([_muted(rng) for _ in range(25)]).reshape(5, 5, 3).clip(0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.float32)
    sigma = rng.uniform(2, 10) if kind == "noise" else rng.uniform(0, 5)
    return img + rng.normal(0, sigma, size=(side, side, 3)).astype(np.float32)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int, clutter: float) -> None:
    """Thin lines and specks (never a vocabulary shape) in any colour, drawn behind the objects."""
    width = max(1, side // 128)
    palette = list(COLORS.values())

    def colour() -> tuple[int, ...]:
        if rng.random() < 0.5:  # named colours too, so colour alone does not find the objects
            return palette[rng.integers(len(palette))]
        return tuple(int(v) for v in rng.integers(0, 256, size=3))

    for _ in range(rng.poisson(4 * clutter)):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, side, size=4))
        draw.line([(x0, y0), (x1, y1)], fill=colour(), width=width)
    for _ in range(rng.poisson(8 * clutter)):
        x, y = (float(v) for v in rng.uniform(0, side, size=2))
        rad = rng.uniform(0.5, max(1.0, 0.012 * side))
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=colour())


def _layout(rng: np.random.Generator, side: int, radii: list[float]) -> list[tuple[float, float]]:
    """Centres whose square footprints are pairwise separated, so boxes never overlap."""
    gap = max(2.0, 0.02 * side)
    for _ in range(50):
        centres: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(200):
                cx, cy = (float(v) for v in rng.uniform(r + 1, side - r - 1, size=2))
                if all(
                    abs(cx - ox) >= r + orad + gap or abs(cy - oy) >= r + orad + gap
                    for (ox, oy), orad in zip(centres, radii)
                ):
                    centres.append((cx, cy))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise DataError(f"cannot place {len(radii)} objects in a {side}px image; lower max_objects")


def _render_scene(
    rng: np.random.Generator,
    side: int,
    pairs: list[tuple[str, str]],
    forced: tuple[str, str] | None,
    n_objects: int,
    clutter: float,
    background: str,
) -> tuple[Image.Image, list[dict], str]:
    """Draw one scene; returns the image, its objects (ground truth) and the background kind."""
    specs: list[tuple[str, str]] = []
    for k in range(n_objects):
        if k == 0 and forced is not None:
            specs.append(forced)
        elif k > 0 and rng.random() < _DUPLICATE_P:
            specs.append(specs[rng.integers(k)])
        else:
            specs.append(pairs[rng.integers(len(pairs))])
    sizes = [SIZES[rng.integers(2)] for _ in specs]
    radii = [side * rng.uniform(*_RADIUS[s]) for s in sizes]
    centres = _layout(rng, side, radii)
    kind = background if background != "textured" else ("gradient", "stripes", "noise")[rng.integers(3)]
    pixels = _background(rng, side, kind).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng, side, clutter)
    objects = []
    for (color, shape), size, r, (cx, cy) in zip(specs, sizes, radii, centres):
        fill = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, size=3), 0, 255))
        if shape in ("circle", "ring"):
            box = [cx - r, cy - r, cx + r, cy + r]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            else:
                draw.ellipse(box, outline=fill, width=max(2, round(0.35 * r)))
        else:
            pts = _shape_points(shape, cx, cy, r, rng.uniform(-0.2, 0.2))
            draw.polygon(pts, fill=fill)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = [min(xs), min(ys), max(xs), max(ys)]
        box = [round(v, 2) for v in box]
        centre = [round((box[0] + box[2]) / 2, 2), round((box[1] + box[3]) / 2, 2)]
        objects.append({"shape": shape, "color": color, "size": size, "box": box, "center": centre})
    return image, objects, kind


# ----------------------------------------------------------------------------- dataset


def novel_pairs(seed: int) -> list[tuple[str, str]]:
    """The held-out (colour, shape) pairs of ``seed``: distinct colours and shapes, ~10% of pairs."""
    rng = np.random.default_rng([seed, 7])
    n = max(1, round(NOVEL_FRACTION * len(COLORS) * len(SHAPES)))
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    # One pair per colour and per shape, so every word still has plenty of training partners.
    return sorted(zip(colors[:n], shapes[:n]))


def generate_dataset(
    out: str | Path,
    seed: int = 0,
    n_train: int = 4000,
    n_val: int = 300,
    n_test: int = 500,
    n_test_novel: int = 500,
    image_size: int = 224,
    min_objects: int = 1,
    max_objects: int = 4,
    clutter: float = 0.5,
    background: str = "textured",
    captions_per_image: int = 5,
    vocab_max_size: int | None = None,
    vocab_min_count: int = 1,
) -> Path:
    """Generate the shapes benchmark as a prepared dataset folder (manifest written last)."""
    kwargs = {k: v for k, v in locals().items() if k != "out"}
    counts = {"train": n_train, "val": n_val, "test": n_test, "test_novel": n_test_novel}
    require(n_train >= 1, f"shapes n_train={n_train} must be >= 1 (the vocabulary is built from train)")
    for split, n in counts.items():
        require(isinstance(n, int) and n >= 0, f"shapes n_{split}={n!r} must be an integer >= 0")
    require(image_size >= 64, f"shapes image_size={image_size} must be >= 64 px (small shapes vanish below)")
    require(
        1 <= min_objects <= max_objects <= MAX_OBJECTS,
        f"shapes min_objects={min_objects}, max_objects={max_objects}: need 1 <= min <= max <= {MAX_OBJECTS}",
    )
    require(0 <= clutter <= 5, f"shapes clutter={clutter} must be in [0, 5] (0 = none, 0.5 = default)")
    require(background in BACKGROUNDS, f"shapes background={background!r}; choose one of {BACKGROUNDS}")
    require(
        1 <= captions_per_image <= 10, f"shapes captions_per_image={captions_per_image} must be in [1, 10]"
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands

    held_out = novel_pairs(seed)
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    seen_pairs = [p for p in all_pairs if p not in held_out]
    records: list[ImageRecord] = []
    with ImageStoreWriter(out) as store:
        for split_code, split in enumerate(SPLIT_ORDER):
            novel = split == "test_novel"
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_code, i])  # one stream per image
                n_objects = int(rng.integers(min_objects, max_objects + 1))
                forced = held_out[rng.integers(len(held_out))] if novel else None
                image, objects, kind = _render_scene(
                    rng,
                    image_size,
                    all_pairs if novel else seen_pairs,
                    forced,
                    n_objects,
                    clutter,
                    background,
                )
                captions, info = draw_captions(objects, rng, captions_per_image)
                image_id = f"shapes_{split}_{i:05d}"
                store.add_pil(image_id, image, fmt="JPEG", quality=JPEG_QUALITY)
                meta = {
                    "image_size": [image_size, image_size],
                    "background": kind,
                    "objects": objects,
                    "captions": info,
                }
                records.append(
                    ImageRecord(image_id, split, image_id, captions, [tokenize(c) for c in captions], meta)
                )
    write_annotations(out, records)
    vocab = Vocab.build(
        (t for r in records if r.split == "train" for t in r.tokens), vocab_max_size, vocab_min_count
    )
    vocab.save(out / VOCAB)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": {
            "format": "shapes",
            "generator": kwargs,
            "shapes": list(SHAPES),
            "colors": list(COLORS),
            "sizes": list(SIZES),
            "novel_pairs": [list(p) for p in held_out],
        },
        "splits": {
            s: {"images": counts[s], "captions": sum(len(r.captions) for r in records if r.split == s)}
            for s in SPLIT_ORDER
        },
        "vocab": {"max_size": vocab_max_size, "min_count": vocab_min_count, "size": len(vocab)},
        "content_hash": content_hash(records),
        "images": True,
        "image_side": image_size,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / MANIFEST, manifest, indent=2)
    return out
