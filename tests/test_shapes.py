"""The generated shapes benchmark: determinism, held-out pairs, grammar <-> parser, flips, configs."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from captioner.config import LoaderConfig
from captioner.data.annotations import read_annotations
from captioner.data.records import (
    ANNOTATIONS,
    IMAGES_BIN,
    IMAGES_INDEX,
    VOCAB,
    read_manifest,
)
from captioner.data.shapes import generate_dataset
from captioner.data.shapes_language import (
    COLORS,
    SHAPES,
    flip_meta,
    flip_tokens,
    match_objects,
    parse_caption,
    parse_relations,
    relation_holds,
    scene_from_meta,
)
from captioner.data.store import ImageStore
from captioner.data.vocab import Vocab
from captioner.errors import ConfigError

TINY = dict(n_train=20, n_val=4, n_test=4, n_test_novel=6, image_size=64, max_objects=4, clutter=1.0)
CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("shapes") / "a", seed=3, **TINY)


def test_same_seed_gives_identical_files_and_another_seed_differs(tiny, tmp_path):
    again = generate_dataset(tmp_path / "b", seed=3, **TINY)
    other = generate_dataset(tmp_path / "c", seed=4, **TINY)
    for name in (IMAGES_BIN, IMAGES_INDEX, ANNOTATIONS, VOCAB):
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    assert (tiny / IMAGES_BIN).read_bytes() != (other / IMAGES_BIN).read_bytes()
    assert (tiny / ANNOTATIONS).read_bytes() != (other / ANNOTATIONS).read_bytes()


def test_prepared_folder_is_complete_and_consistent(tiny):
    manifest = read_manifest(tiny)
    records = read_annotations(tiny)
    store = ImageStore(tiny)
    assert manifest["source"]["format"] == "shapes"
    assert manifest["images"] is True
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {
        "train": 20,
        "val": 4,
        "test": 4,
        "test_novel": 6,
    }
    assert Counter(r.split for r in records) == {"train": 20, "val": 4, "test": 4, "test_novel": 6}
    for r in records:
        assert store.size(r.file) == (64, 64)
        assert len(set(r.captions)) == 5  # five different references per image
        assert r.meta["image_size"] == [64, 64]
        assert 1 <= len(r.meta["objects"]) <= 4
    # The vocabulary comes from train only and covers every colour and shape word used there.
    vocab = Vocab.load(tiny / VOCAB)
    train_words = {w for r in records if r.split == "train" for t in r.tokens for w in t}
    assert set(vocab.itos[4:]) == train_words
    assert store.tensor(records[0].file).shape == (3, 64, 64)


def test_novel_pairs_never_seen_outside_test_novel(tiny):
    records = read_annotations(tiny)
    novel = {tuple(p) for p in read_manifest(tiny)["source"]["novel_pairs"]}
    assert len(novel) == round(0.1 * len(COLORS) * len(SHAPES))
    for r in records:
        pairs = {(o["color"], o["shape"]) for o in r.meta["objects"]}
        if r.split == "test_novel":
            assert pairs & novel, r.id
        else:
            assert not pairs & novel, r.id


def test_every_caption_parses_back_to_the_ground_truth(tiny):
    for r in read_annotations(tiny):
        scene = scene_from_meta(r.meta)
        truth = Counter((o.color, o.shape) for o in scene)
        for tokens, info in zip(r.tokens, r.meta["captions"]):
            parsed = parse_caption(tokens)
            named = Counter((p.color, p.shape) for p in parsed for _ in range(p.count))
            assert named == truth, " ".join(tokens)
            for p, matched in zip(parsed, match_objects(parsed, scene)):
                assert len(matched) == p.count
                assert p.size is None or all(scene[k].size == p.size for k in matched)
            # Relations hold in the real geometry, and agree with the stored ones.
            stored = [tuple(x) for x in info["relations"]]
            found = parse_relations(tokens)
            assert len(found) == len(stored)
            matches = match_objects(parsed, scene)
            for rel, (a, name, b) in zip(found, stored):
                assert rel.relation == name
                assert matches[rel.subject] == [a] and matches[rel.object] == [b]
                assert relation_holds(scene[a].box, name, scene[b].box)
            # The alignment points each colour/shape/size word at the object(s) it names.
            for pos, k in info["alignment"]:
                assert tokens[pos] in (scene[k].color, scene[k].shape, scene[k].size) or tokens[
                    pos
                ].startswith(scene[k].shape)


def test_parser_reads_counts_sizes_relations_and_tolerates_noise():
    tokens = "there are two small green squares and a red star to the left of a large blue circle".split()
    parsed = parse_caption(tokens)
    assert [(p.count, p.size, p.color, p.shape) for p in parsed] == [
        (2, "small", "green", "square"),
        (1, None, "red", "star"),
        (1, "large", "blue", "circle"),
    ]
    [rel] = parse_relations(tokens)
    assert (rel.subject, rel.relation, rel.object) == (1, "left", 2)
    noisy = "a <unk> red red circle circle and the crosses".split()
    assert [(p.count, p.color, p.shape) for p in parse_caption(noisy)] == [
        (1, "red", "circle"),
        (1, None, "circle"),
        (2, None, "cross"),
    ]


def test_flip_swaps_left_right_and_mirrors_boxes(tiny):
    assert flip_tokens("a red circle to the left of a star right".split()) == (
        "a red circle to the right of a star left".split()
    )
    for r in read_annotations(tiny):
        flipped = flip_meta(r.meta)
        twice = flip_meta(flipped, 64)
        for o, f, t in zip(r.meta["objects"], flipped["objects"], twice["objects"]):
            assert t["box"] == pytest.approx(o["box"])
            assert f["box"] == pytest.approx([64 - o["box"][2], o["box"][1], 64 - o["box"][0], o["box"][3]])
            assert f["center"][0] == pytest.approx(64 - o["center"][0])
        scene = scene_from_meta(flipped)
        for tokens, info in zip(r.tokens, flipped["captions"]):
            # The flipped caption's relations hold in the flipped geometry.
            for (a, name, b), rel in zip(info["relations"], parse_relations(flip_tokens(tokens))):
                assert rel.relation == name
                assert relation_holds(scene[a].box, name, scene[b].box)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 32},
        {"max_objects": 9},
        {"min_objects": 3, "max_objects": 2},
        {"background": "marble"},
        {"clutter": -1},
        {"n_train": 0},
        {"captions_per_image": 0},
    ],
)
def test_bad_generator_settings_raise_one_line_config_errors(tmp_path, bad):
    with pytest.raises(ConfigError) as err:
        generate_dataset(tmp_path / "x", **{**TINY, **bad})
    assert "\n" not in str(err.value) and str(next(iter(bad))) in str(err.value)


@pytest.mark.parametrize("name", ["shapes", "shapes_smoke", "shapes_hard"])
def test_configs_map_onto_the_generator(tmp_path, name):
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    kwargs = {k: v for k, v in cfg["prepare"].items() if k != "format"}
    assert cfg["prepare"]["format"] == "shapes"
    # Same settings, just a handful of images: every key is a real generator argument.
    small = {**kwargs, "n_train": 3, "n_val": 1, "n_test": 1, "n_test_novel": 1, "image_size": 64}
    out = generate_dataset(tmp_path / name, **small)
    records = read_annotations(out)
    assert len(records) == 6
    loader = {**asdict(LoaderConfig()), **cfg.get("loader", {})}  # the YAML holds only what it changes
    assert max(len(t) for r in records for t in r.tokens) <= loader["max_len"]
    assert loader["image_size"] == kwargs["image_size"]


def test_hard_scenes_fit_many_objects(tmp_path):
    out = generate_dataset(
        tmp_path / "h",
        n_train=6,
        n_val=0,
        n_test=0,
        n_test_novel=0,
        image_size=64,
        min_objects=6,
        max_objects=6,
    )
    for r in read_annotations(out):
        boxes = [o["box"] for o in r.meta["objects"]]
        assert len(boxes) == 6
        for i, a in enumerate(boxes):  # pairwise separated along some axis: no overlap
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert json.loads((out / "manifest.json").read_text())["source"]["generator"]["max_objects"] == 6
