"""The generated "shapes" benchmark: scenes of coloured shapes with exact ground truth.

Photo datasets cannot tell us whether each object was named right or whether attention looked at
it; here every image comes with its objects (shape, colour, size, box), and every reference caption
with the token positions that name each object. The module holds the scene generator, the caption
grammar (paraphrases, counts, spatial relations), a parser that reads grammar captions (and model
outputs) back into objects, and the horizontal-flip helpers the data loader needs.

Compositional generalisation: a few colour-shape pairs (``novel_pairs``, ~10%, fixed by the seed)
never occur in train/val/test; every ``test_novel`` image contains at least one of them.
"""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.data.records import (
    FORMAT_VERSION,
    MANIFEST,
    VOCAB,
    ImageRecord,
    content_hash,
    write_annotations,
    write_json_atomic,
)
from captioner.data.store import ImageStoreWriter
from captioner.data.vocab import Vocab, tokenize
from captioner.errors import DataError, require

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "ring")
PLURAL = {s: s + ("es" if s.endswith("ss") else "s") for s in SHAPES}
# Saturated, mutually distant colours; backgrounds are muted mid-greys so none of these blend in.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 75, 230),
    "yellow": (245, 220, 35),
    "purple": (135, 45, 185),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES = ("small", "large")
RELATIONS = ("left", "right", "above", "below")
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
BACKGROUNDS = ("plain", "gradient", "stripes", "noise", "textured")
SPLIT_ORDER = ("train", "val", "test", "test_novel")
MAX_OBJECTS = 6
NOVEL_FRACTION = 0.1
JPEG_QUALITY = 95

_RADIUS = {"small": (0.065, 0.08), "large": (0.12, 0.15)}  # footprint half-side, fraction of image side
_DUPLICATE_P = 0.15  # chance a new object repeats an existing colour-shape pair, so counts occur
_COUNT_WORD = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURAL.items()}}
_REL_PHRASES = {
    "left": (("to", "the", "left", "of"), ("left", "of"), ("on", "the", "left", "of")),
    "right": (("to", "the", "right", "of"), ("right", "of"), ("on", "the", "right", "of")),
    "above": (("above",), ("over",)),
    "below": (("below",), ("under",)),
}
_REL_WORDS = {
    "left": "left",
    "right": "right",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
}
_INTROS = ((), ("there", "is"), ("an", "image", "with"), ("a", "picture", "of"), ("this", "image", "shows"))


# ----------------------------------------------------------------------------- scenes and parsing


@dataclass
class SceneObject:
    """One ground-truth object; ``box`` is [x0, y0, x1, y1] in pixels, ``center`` the box centre."""

    shape: str
    color: str
    size: str
    box: list[float]
    center: list[float]


@dataclass
class ParsedObject:
    """An object phrase read from a caption ("two small green squares"); positions index the tokens.

    ``size``/``color`` are None when the phrase does not state them.
    """

    count: int
    size: str | None
    color: str | None
    shape: str
    start: int
    end: int
    size_pos: int | None
    color_pos: int | None
    shape_pos: int


@dataclass
class ParsedRelation:
    """``objects[subject] <relation> objects[object]`` with indices into ``parse_caption``'s list."""

    subject: int
    relation: str
    object: int


def scene_from_meta(meta: dict) -> list[SceneObject]:
    """The ground-truth objects stored in a shapes record's ``meta``."""
    try:
        return [SceneObject(**o) for o in meta["objects"]]
    except (KeyError, TypeError) as err:
        raise DataError(
            f"record meta has no valid shapes objects ({err}); is this a shapes dataset?"
        ) from err


def _match_phrase(tokens: Sequence[str], i: int) -> ParsedObject | None:
    """Longest object phrase ``[number] [size] [colour] shape`` starting at ``i``, if any."""
    j, n = i, len(tokens)
    count = size = color = size_pos = color_pos = None
    if j < n and tokens[j] in _NUMBERS:
        count, j = _NUMBERS[tokens[j]], j + 1
    if j < n and tokens[j] in SIZES:
        size, size_pos, j = tokens[j], j, j + 1
    if j < n and tokens[j] in COLORS:
        color, color_pos, j = tokens[j], j, j + 1
    if j >= n or tokens[j] not in _SHAPE_WORDS:
        return None
    plural = tokens[j] != _SHAPE_WORDS[tokens[j]]
    if count is None:
        count = 2 if plural else 1  # "green squares" without a number: at least two
    return ParsedObject(count, size, color, _SHAPE_WORDS[tokens[j]], i, j + 1, size_pos, color_pos, j)


def _parse(tokens: Sequence[str]) -> tuple[list[ParsedObject], list[ParsedRelation]]:
    objects: list[ParsedObject] = []
    relations: list[ParsedRelation] = []
    pending: str | None = None  # a relation word seen since the previous object phrase
    i = 0
    while i < len(tokens):
        phrase = _match_phrase(tokens, i)
        if phrase is not None:
            if pending is not None and objects:
                relations.append(ParsedRelation(len(objects) - 1, pending, len(objects)))
            objects.append(phrase)
            pending, i = None, phrase.end
            continue
        if tokens[i] in _REL_WORDS:
            pending = _REL_WORDS[tokens[i]]
        elif tokens[i] == "and":
            pending = None
        i += 1
    return objects, relations


def parse_caption(tokens: Sequence[str]) -> list[ParsedObject]:
    """The object phrases of a caption (grammar output or a model's), in caption order."""
    return _parse(tokens)[0]


def parse_relations(tokens: Sequence[str]) -> list[ParsedRelation]:
    """The spatial relations of a caption, indexing the objects ``parse_caption`` returns."""
    return _parse(tokens)[1]


def match_objects(parsed: Sequence[ParsedObject], scene: Sequence[SceneObject]) -> list[list[int]]:
    """For each parsed phrase, the scene objects it names (same colour and shape; stated size first)."""
    free = set(range(len(scene)))
    matches = []
    for p in parsed:
        same = [k for k in sorted(free) if scene[k].color == p.color and scene[k].shape == p.shape]
        same.sort(key=lambda k: scene[k].size != p.size)  # stable: right-size objects first
        chosen = same[: p.count]
        free.difference_update(chosen)
        matches.append(chosen)
    return matches


def relation_of(a: Sequence[float], b: Sequence[float]) -> str | None:
    """The relation "a <rel> b" along the axis where the boxes are most clearly apart (None: overlap)."""
    hgap = max(b[0] - a[2], a[0] - b[2])
    vgap = max(b[1] - a[3], a[1] - b[3])
    if max(hgap, vgap) < 0:
        return None
    if hgap >= vgap:
        return "left" if a[2] <= b[0] else "right"
    return "above" if a[3] <= b[1] else "below"


def relation_holds(a: Sequence[float], relation: str, b: Sequence[float]) -> bool:
    """Whether box ``a`` lies entirely ``relation`` of box ``b`` (image y grows downwards)."""
    return {
        "left": a[2] <= b[0],
        "right": a[0] >= b[2],
        "above": a[3] <= b[1],
        "below": a[1] >= b[3],
    }[relation]


# ----------------------------------------------------------------------------- horizontal flip


def flip_tokens(tokens: Sequence[str]) -> list[str]:
    """The caption of the mirrored image: "left" <-> "right" (every other word unchanged)."""
    swap = {"left": "right", "right": "left"}
    return [swap.get(w, w) for w in tokens]


def flip_meta(meta: dict, width: float | None = None) -> dict:
    """Ground truth of the mirrored image: boxes/centres mirrored, left/right relations swapped.

    ``width`` defaults to the stored image width; token alignments are unchanged because
    ``flip_tokens`` swaps single words in place.
    """
    width = meta["image_size"][0] if width is None else width
    out = copy.deepcopy(meta)
    for o in out["objects"]:
        x0, y0, x1, y1 = o["box"]
        o["box"] = [round(width - x1, 2), y0, round(width - x0, 2), y1]
        o["center"] = [round(width - o["center"][0], 2), o["center"][1]]
    for cap in out.get("captions", []):
        cap["relations"] = [
            [a, {"left": "right", "right": "left"}.get(r, r), b] for a, r, b in cap["relations"]
        ]
    return out


# ----------------------------------------------------------------------------- caption grammar


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(
    scene: list[dict], group: list[int], with_size: bool, words: list[str], align: list[list[int]]
) -> None:
    """Append the noun phrase for ``group`` (objects of one colour+shape) to ``words``/``align``."""
    first = scene[group[0]]
    sizes = {scene[k]["size"] for k in group}
    body = ([first["size"]] if with_size and len(sizes) == 1 else []) + [first["color"]]
    noun = first["shape"] if len(group) == 1 else PLURAL[first["shape"]]
    det = _article(body[0]) if len(group) == 1 else _COUNT_WORD[len(group)]
    words.append(det)
    for w in [*body, noun]:
        align.extend([len(words), k] for k in group)
        words.append(w)


def _caption(scene: list[dict], rng: np.random.Generator) -> tuple[list[str], dict]:
    """One random caption naming every object, with its word->object alignment and relations."""
    groups: dict[tuple[str, str], list[int]] = {}
    for k, o in enumerate(scene):
        groups.setdefault((o["color"], o["shape"]), []).append(k)
    order = list(groups.values())
    how = rng.integers(3)
    if how == 0:
        rng.shuffle(order)
    elif how == 1:  # left to right, the way people tend to list a scene
        order.sort(key=lambda g: min(scene[k]["center"][0] for k in g))
    else:  # counted groups first: "two green squares and a red star"
        order.sort(key=lambda g: -len(g))
    with_size = bool(rng.random() < 0.7)
    words: list[str] = []
    align: list[list[int]] = []
    relations: list[list] = []
    singles = [g for g in order if len(g) == 1]
    if len(singles) >= 2 and rng.random() < 0.6:
        # Relation clauses "A <rel> B" between objects their phrase names uniquely; rest listed with "and".
        rest = [g for g in order if len(g) > 1]
        rng.shuffle(singles)
        n_pairs = 2 if len(singles) >= 4 and rng.random() < 0.5 else 1
        clauses = [(singles[2 * p], singles[2 * p + 1]) for p in range(n_pairs)]
        rest += singles[2 * n_pairs :]
        form = rng.integers(3)
        if form == 2:
            words += ["there", "is"]
        for c, (ga, gb) in enumerate(clauses):
            if c:
                words.append("and")
            a, b = ga[0], gb[0]
            rel = relation_of(scene[a]["box"], scene[b]["box"])
            _phrase(scene, ga, with_size, words, align)
            if form == 1:
                words.append("is")
            options = _REL_PHRASES[rel]
            words += options[rng.integers(len(options))]
            _phrase(scene, gb, with_size, words, align)
            relations.append([a, rel, b])
        for g in rest:
            words.append("and")
            _phrase(scene, g, with_size, words, align)
    else:
        intro = list(_INTROS[rng.integers(len(_INTROS))])
        if intro == ["there", "is"] and len(order[0]) > 1:
            intro = ["there", "are"]
        words += intro
        for i, g in enumerate(order):
            if i:
                words.append("and")
            _phrase(scene, g, with_size, words, align)
    return words, {"alignment": align, "relations": relations}


def _captions(scene: list[dict], rng: np.random.Generator, n: int) -> tuple[list[str], list[dict]]:
    """``n`` different captions (repeats only if the grammar has fewer variants for this scene)."""
    found: dict[str, dict] = {}
    drawn: list[tuple[str, dict]] = []
    for _ in range(40 * n):
        words, info = _caption(scene, rng)
        text = " ".join(words)
        drawn.append((text, info))
        found.setdefault(text, info)
        if len(found) == n:
            break
    items = list(found.items())
    while len(items) < n:  # never seen in practice for n <= 10; keeps the count exact regardless
        items.append(drawn[len(items) % len(drawn)])
    return [t for t, _ in items], [i for _, i in items]


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
                captions, info = _captions(objects, rng, captions_per_image)
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
