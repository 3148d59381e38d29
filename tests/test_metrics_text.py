"""Caption metrics equal coco-caption's (pycocoevalcap) on real human captions and on edge cases."""

from __future__ import annotations

import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from captioner.data.vocab import tokenize
from captioner.errors import ConfigError, DataError
from captioner.metrics import (
    bleu,
    cider_d,
    evaluate_captions,
    java,
    meteor,
    meteor_unavailable,
    ngram,
    per_caption,
    rouge_l,
    score_captions,
    spice,
    spice_unavailable,
)

FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
# Points on the 0-100 scale, what the README promises; measured: BLEU, ROUGE-L and CIDEr-D differ from coco
# by <= 1e-13 (float rounding), METEOR (the same jar) by 0.
TOL = 1e-9


def _coco(hyps: list[list[str]], refs: list[list[list[str]]]) -> dict[str, tuple]:
    """pycocoevalcap's (corpus, per-caption) per metric, fed pre-tokenised strings (no PTBTokenizer)."""
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    rouge_mod = pytest.importorskip("pycocoevalcap.rouge.rouge")
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    out = {}
    corpus, per = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"bleu{k + 1}"] = (corpus[k], per[k])
    out["rouge_l"] = rouge_mod.Rouge().compute_score(gts, res)
    out["cider_d"] = cider_mod.Cider().compute_score(gts, res)
    return out


def _assert_matches_coco(ours: dict, coco: dict) -> None:
    for key, (corpus, per) in coco.items():
        assert ours.corpus[key] == pytest.approx(100 * corpus, abs=TOL), key
        np.testing.assert_allclose(
            ours.per_caption[key], 100 * np.asarray(per), rtol=0, atol=TOL, err_msg=key
        )


@pytest.fixture(scope="module")
def flickr_captions() -> tuple[list[list[str]], list[list[list[str]]]]:
    """First caption of 600 Flickr8k images as hypothesis, the other four as references."""
    token_file = FLICKR8K / "Flickr8k.token.txt"
    if not token_file.is_file():
        pytest.skip(f"Flickr8k text release not found at {token_file} (clone ../shared beside the repo)")
    captions: dict[str, list[list[str]]] = defaultdict(list)
    for line in token_file.read_text(encoding="utf-8").splitlines():
        key, text = line.split("\t", 1)
        captions[key.split("#")[0]].append(tokenize(text))
    keys = [k for k in sorted(captions) if len(captions[k]) == 5][:600]
    assert len(keys) == 600
    return [captions[k][0] for k in keys], [captions[k][1:] for k in keys]


def test_bleu_rouge_cider_equal_coco_on_flickr8k(flickr_captions):
    hyps, refs = flickr_captions
    coco = _coco(hyps, refs)
    ours = evaluate_captions(hyps, refs, metrics=["bleu", "rouge_l", "cider_d"])
    _assert_matches_coco(ours, coco)
    # Human captions score like a strong model: a sanity check on the scale (0-100, CIDEr x100 of coco).
    assert 50 < ours.corpus["bleu1"] < 80 and 10 < ours.corpus["bleu4"] < 35
    assert 30 < ours.corpus["cider_d"] < 150


@pytest.mark.slow
def test_meteor_equals_coco_on_flickr8k(flickr_captions):
    if meteor_unavailable():
        pytest.skip(meteor_unavailable())
    meteor_mod = pytest.importorskip("pycocoevalcap.meteor.meteor")
    hyps, refs = flickr_captions
    hyps, refs = [[], *hyps[1:500]], refs[:500]  # with one empty caption, as a weak model may emit
    ours = meteor(hyps, refs)
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    corpus, per = meteor_mod.Meteor().compute_score(gts, res)
    assert ours.corpus["meteor"] == pytest.approx(100 * corpus, abs=TOL)
    np.testing.assert_allclose(ours.per_caption["meteor"], 100 * np.asarray(per), rtol=0, atol=TOL)


def test_variable_reference_counts_and_empty_hypothesis_equal_coco():
    rng = random.Random(0)
    words = "a dog man woman runs on the grass in red shirt ball plays with".split()
    hyps = [[rng.choice(words) for _ in range(rng.randint(1, 12))] for _ in range(20)]
    hyps[3] = []  # an empty caption (a model that emits <end> first)
    hyps[5] = ["dog"]
    refs = [
        [[rng.choice(words) for _ in range(rng.randint(2, 12))] for _ in range(1 + i % 7)] for i in range(20)
    ]
    _assert_matches_coco(
        evaluate_captions(hyps, refs, metrics=["bleu", "rouge_l", "cider_d"]), _coco(hyps, refs)
    )
    empty = per_caption(hyps, refs, metrics=["bleu", "rouge_l", "cider_d"])[3]
    assert empty == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "rouge_l": 0.0, "cider_d": 0.0}


def test_identical_caption_scores_100():
    caption = "a black dog runs across the green grass".split()
    other = "two people sit on a bench".split()
    scores = score_captions([caption, other], [[caption], [other, caption]], metrics=["bleu", "rouge_l"])
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert scores[key] == pytest.approx(100.0, abs=1e-4), key


def test_special_tokens_are_stripped():
    plain = score_captions(
        [["a", "dog", "runs", "fast"]], [[["a", "dog", "runs", "fast", "now"]]], ["bleu", "rouge_l"]
    )
    noisy = score_captions(
        [["<start>", "a", "dog", "runs", "fast", "<end>", "<pad>"]],
        [[["<start>", "a", "dog", "runs", "fast", "now", "<end>"]]],
        ["bleu", "rouge_l"],
    )
    assert noisy == plain


def test_lcs_matches_dynamic_programming():
    rng = random.Random(1)

    def lcs_dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = (
                    table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
                )
        return table[-1][-1]

    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 15))]
        assert ngram._lcs_length(a, b) == lcs_dp(a, b)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(DataError, match="2 hypotheses but 1 reference"):
        bleu([["a"], ["b"]], [[["a"]]])
    with pytest.raises(DataError, match="caption 0 has no non-empty reference"):
        rouge_l([["a"]], [[[], ["<end>"]]])
    with pytest.raises(DataError, match="token lists"):
        cider_d(["a dog"], [[["a", "dog"]]])
    with pytest.raises(ConfigError, match="unknown \\['bleu5'\\]"):
        score_captions([["a"]], [[["a"]]], metrics=["bleu5"])
    with pytest.raises(ConfigError, match="must be a list"):
        score_captions([["a"]], [[["a"]]], metrics="bleu")
    with pytest.raises(ConfigError, match="sigma"):
        cider_d([["a"]], [[["a"]]], sigma=0)


def test_meteor_without_java_returns_none_and_is_reported(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    hyps, refs = [["a", "dog"]], [[["a", "dog"]]]
    assert "no `java` on PATH" in meteor_unavailable()
    assert meteor(hyps, refs) is None
    result = evaluate_captions(hyps, refs)
    assert "meteor" not in result.corpus and "no `java`" in result.skipped["meteor"]
    assert set(result.corpus) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"}


def test_meteor_jar_env_var_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(java.METEOR_JAR_ENV, str(tmp_path / "missing.jar"))
    with pytest.raises(DataError, match="missing.jar is not a file"):
        java.find_meteor_jar()


def test_spice_reports_why_it_cannot_run():
    reason = spice_unavailable()
    if reason is None:
        pytest.skip("SPICE can run here (Java + CoreNLP present); nothing to report")
    assert reason.startswith("SPICE skipped:")
    assert spice([["a", "dog"]], [[["a", "dog"]]]) is None
