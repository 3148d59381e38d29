"""Grounding metrics on hand-made scenes with known answers, and on the generator's own references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from captioner.data.annotations import read_annotations
from captioner.data.shapes import generate_dataset
from captioner.errors import DataError
from captioner.metrics.grounding import attention_scores, object_scores

GRID = (4, 4)  # 16 px cells on a 64 px image


def _obj(shape, color, size, box):
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "box": box,
        "center": [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
    }


META = {
    "image_size": [64, 64],
    "objects": [
        _obj("circle", "red", "small", [0, 0, 32, 32]),  # exactly cells (0,0) (0,1) (1,0) (1,1)
        _obj("star", "blue", "large", [32, 32, 64, 64]),  # exactly the bottom-right quarter
        _obj("square", "green", "small", [40, 0, 56, 16]),
    ],
}


def _scores(caption: str, meta: dict = META) -> dict:
    return object_scores([caption.split()], [meta])


def test_a_caption_naming_every_object_right_is_perfect():
    s = _scores("there is a small red circle to the left of a green square and a large blue star")
    assert s["object_precision"] == s["object_recall"] == s["object_f1"] == 1.0
    assert s["size_accuracy"] == 1.0 and s["exact_scene"] == 1.0


def test_one_wrong_colour_costs_one_third_of_precision_and_recall():
    s = _scores("a small red circle and a large yellow star and a small green square")
    # 3 named, 2 right (the yellow star matches nothing) of 3 true objects.
    assert s["object_precision"] == pytest.approx(2 / 3)
    assert s["object_recall"] == pytest.approx(2 / 3)
    assert s["object_f1"] == pytest.approx(2 / 3)
    assert s["exact_scene"] == 0.0


def test_counts_missing_objects_and_sizes_are_scored_separately():
    s = _scores("two red circles")  # one too many circles, star and square missing
    assert s["object_precision"] == pytest.approx(1 / 2)
    assert s["object_recall"] == pytest.approx(1 / 3)
    assert s["object_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    wrong_size = _scores("a large red circle and a large blue star and a green square")
    assert wrong_size["object_f1"] == 1.0  # colour + shape all right ...
    assert wrong_size["size_accuracy"] == pytest.approx(1 / 2)  # ... one of two stated sizes wrong
    assert wrong_size["exact_scene"] == 0.0
    # Micro-averaged over images: 3/3 right plus 1/2 named right of 1 true.
    both = object_scores(
        ["a red circle and a blue star and a green square".split(), "two red circles".split()],
        [META, {"image_size": [64, 64], "objects": META["objects"][:1]}],
    )
    assert both["object_precision"] == pytest.approx(4 / 5)
    assert both["object_recall"] == pytest.approx(4 / 4)
    assert both["exact_scene"] == pytest.approx(1 / 2)
    empty = _scores("")
    assert (
        math.isnan(empty["object_precision"]) and empty["object_recall"] == 0.0 and empty["object_f1"] == 0.0
    )


def _one_hot(cells: list[int], words: int) -> np.ndarray:
    alphas = np.full((words, 16), 0.0)
    alphas[:, cells] = 1.0 / len(cells)
    return alphas


def test_attention_peaked_inside_the_box_points_right_and_outside_points_wrong():
    tokens = "a red circle".split()  # object words: "red" (1) and "circle" (2)
    inside = attention_scores([tokens], [_one_hot([0], 3)], GRID, [META])
    assert inside["pointing_accuracy"] == 1.0 and inside["attention_mass"] == pytest.approx(1.0)
    assert inside["object_words"] == 2 and inside["pointing_chance"] == pytest.approx(4 / 16)
    outside = attention_scores([tokens], [torch.tensor(_one_hot([15], 3))], GRID, [META])
    assert outside["pointing_accuracy"] == 0.0 and outside["attention_mass"] == 0.0
    split = attention_scores([tokens], [_one_hot([5, 15], 3)], GRID, [META])
    assert split["attention_mass"] == pytest.approx(0.5)
    # The square covers half of cell (0,2) and none of (0,3): overlap counts as pointing, mass is partial.
    square = attention_scores(["a green square".split()], [_one_hot([2], 3)], GRID, [META])
    assert square["pointing_accuracy"] == 1.0 and square["attention_mass"] == pytest.approx(0.5)


def test_words_naming_no_true_object_are_not_scored_and_bad_shapes_raise():
    s = attention_scores(["a yellow circle".split()], [_one_hot([0], 3)], GRID, [META])
    assert s["object_words"] == 0 and math.isnan(s["pointing_accuracy"])
    with pytest.raises(DataError, match="grid"):
        attention_scores(["a red circle".split()], [np.ones((3, 9)) / 9], GRID, [META])
    with pytest.raises(DataError, match="one of each"):
        attention_scores(["a red circle".split()], [], GRID, [META])


def test_the_generators_own_references_score_perfectly(tmp_path):
    out = generate_dataset(tmp_path / "s", n_train=12, n_val=0, n_test=0, n_test_novel=4, image_size=64)
    records = read_annotations(out)
    for k in range(5):
        s = object_scores([r.tokens[k] for r in records], [r.meta for r in records])
        assert s["object_f1"] == 1.0 and s["exact_scene"] == 1.0
        assert math.isnan(s["size_accuracy"]) or s["size_accuracy"] == 1.0
