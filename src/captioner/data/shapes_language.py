"""The shapes benchmark's language: its words, the grammar that describes a scene, and the parser.

A scene is a list of objects (shape, colour, size, box). The grammar (``draw_captions``) writes
captions that name every object, with paraphrases, counts ("two green squares") and spatial relations,
and records which tokens name which object. The parser (``parse_caption``, ``parse_relations``) reads
any caption, a reference or a model's, back into object phrases and relations, and ``match_objects``
ties them to the scene: the grounding metrics are built on it. The flip helpers give the words and
ground truth of the mirrored image (the loader's horizontal flip). Rendering the scenes and writing the
dataset is ``captioner.data.shapes``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from captioner.errors import DataError

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


def draw_captions(scene: list[dict], rng: np.random.Generator, n: int) -> tuple[list[str], list[dict]]:
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
