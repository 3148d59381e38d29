"""What the shapes captions still get wrong: object errors by kind, and wrong scenes by object count.

    python bench/quality_errors.py runs/quality/scst_f1/quality/beam3_test.json [--data-root data/shapes]

Reads one saved evaluation of ``bench/quality.py`` (``quality/<decode>_<split>.json``: the captions
of every image) and the ground truth of the prepared shapes set. Per image, predicted and true objects
are matched on (colour, shape) as ``object_f1`` matches them; what is left is paired up as a wrong
shape (colour right), a wrong colour (shape right), and the rest as objects left out or extra.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from captioner.data.annotations import load_annotations
from captioner.data.shapes_language import parse_caption, scene_from_meta


def breakdown(captions: dict[str, list[str]], metas: dict[str, dict]) -> dict[str, object]:
    """Object error counts by kind and wrong-scene counts by the scene's object count."""
    kinds: Counter[str] = Counter()
    scenes, wrong_scenes = Counter(), Counter()
    n_true = 0
    for image_id, tokens in captions.items():
        pred = Counter()
        for p in parse_caption(tokens):
            pred[(p.color, p.shape)] += p.count
        true = Counter((o.color, o.shape) for o in scene_from_meta(metas[image_id]))
        n_true += sum(true.values())
        scenes[sum(true.values())] += 1
        missing, extra = list((true - pred).elements()), list((pred - true).elements())
        for pairing, kind in ((0, "wrong shape"), (1, "wrong colour")):  # same colour / same shape
            for t in list(missing):
                match = next((p for p in extra if p[pairing] == t[pairing]), None)
                if match is not None:
                    kinds[kind] += 1
                    missing.remove(t)
                    extra.remove(match)
        kinds["left out"] += len(missing)
        kinds["extra"] += len(extra)
        if pred != true:
            wrong_scenes[sum(true.values())] += 1
    return {
        "objects": n_true,
        "errors": dict(kinds),
        "wrong_scenes_by_objects": {k: f"{wrong_scenes[k]} of {scenes[k]}" for k in sorted(scenes)},
    }


def main() -> None:
    """CLI: print the breakdown of one saved evaluation as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("evaluation", type=Path, help="a quality/<decode>_<split>.json of bench/quality.py")
    p.add_argument("--data-root", type=Path, default=Path("data/shapes"), help="the prepared shapes set")
    args = p.parse_args()
    saved = json.loads(args.evaluation.read_text())
    records = load_annotations(args.data_root)
    metas = {i: r.meta for i, r in records.items() if r.split == saved["split"]}
    captions = {i: c if isinstance(c, list) else str(c).split() for i, c in saved["captions"].items()}
    print(json.dumps(breakdown(captions, metas), indent=1))


if __name__ == "__main__":
    main()
