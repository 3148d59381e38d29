"""Statistics over seeds and claim verdicts (captioner.ablation) on synthetic per-seed results with known differences."""

import math

import pytest

from captioner.ablation import (
    CONTRADICTED,
    HOLDS,
    Claim,
    competence_failures,
    judge,
    load_claims,
    minimum_detectable_effect,
    t_interval,
    t_quantile,
    verdict,
)
from captioner.errors import ConfigError


def t_df2(p: float) -> float:
    """Student t quantile for 2 degrees of freedom in closed form: F(t) = 1/2 + t / (2 sqrt(t^2 + 2))."""
    a = 2 * p - 1
    return a * math.sqrt(2 / (1 - a * a))


def test_t_quantile_matches_the_closed_form_and_tables() -> None:
    assert t_quantile(0.975, 2) == pytest.approx(t_df2(0.975), rel=1e-12)  # 4.3027
    assert t_quantile(0.8, 2) == pytest.approx(t_df2(0.8), rel=1e-12)  # 1.0607
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)  # printed t tables
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)


def test_t_interval_by_hand() -> None:
    i = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = t_df2(0.975) / math.sqrt(3)  # 2.4841
    assert (i.n, i.mean, i.sd) == (3, 2.0, 1.0)
    assert i.low == pytest.approx(2 - half, rel=1e-12) and i.high == pytest.approx(2 + half, rel=1e-12)
    assert i.half_width == pytest.approx(2.484138, abs=1e-6)


def test_t_interval_of_one_or_no_value_has_no_width() -> None:
    one = t_interval([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.low) and math.isnan(one.high)
    assert t_interval([]).n == 0


def test_minimum_detectable_effect_at_80_percent_power() -> None:
    # (t_{0.975,2} + t_{0.8,2}) * sd / sqrt(3) = (4.3027 + 1.0607) * 0.5 / 1.7321
    expected = (t_df2(0.975) + t_df2(0.8)) * 0.5 / math.sqrt(3)
    assert minimum_detectable_effect(0.5, 3) == pytest.approx(expected, rel=1e-12)
    assert minimum_detectable_effect(0.5, 3) == pytest.approx(1.548255, abs=1e-6)
    assert math.isnan(minimum_detectable_effect(0.5, 1))
    # More seeds detect smaller effects.
    assert minimum_detectable_effect(0.5, 10) < minimum_detectable_effect(0.5, 5) < 1.548255


# Per-seed val BLEU-4 of a baseline and of versions whose differences from it are known.
BASE = [30.0, 31.0, 29.5]


def _shift(diffs: list[float]) -> dict[int, float]:
    return {s: b + d for s, (b, d) in enumerate(zip(BASE, diffs))}


VALUES = {
    "base": {"val.bleu4": dict(enumerate(BASE)), "test.object_f1": {0: 0.9, 1: 0.91, 2: 0.92}},
    "better": {"val.bleu4": _shift([2.0, 2.1, 1.9]), "test.object_f1": {0: 0.95, 1: 0.96, 2: 0.97}},
    "worse": {"val.bleu4": _shift([-2.0, -2.2, -1.8]), "test.object_f1": {0: 0.9, 1: 0.91, 2: 0.92}},
    "noise": {"val.bleu4": _shift([1.0, -1.0, 0.5])},
    "close": {"val.bleu4": _shift([0.1, -0.1, 0.0])},
    "far": {"val.bleu4": _shift([3.0, 3.2, 2.8])},
}


def _claim(subject: str, expect: str, than: list[str], within: float | None = None, **kw) -> Claim:
    return Claim(
        id="c", group="g", seed="...", subject=subject, expect=expect, than=tuple(than), within=within, **kw
    )


def test_each_of_the_three_verdicts() -> None:
    better = judge(_claim("better", "higher", ["base"]), VALUES, [])
    assert better.verdict == HOLDS
    diff = better.pairs[0]["diff"]
    assert diff["mean"] == pytest.approx(2.0) and diff["sd"] == pytest.approx(0.1)
    assert diff["ci_low"] == pytest.approx(2.0 - t_df2(0.975) * 0.1 / math.sqrt(3))
    assert better.pairs[0]["seeds"] == [0, 1, 2]
    assert judge(_claim("worse", "higher", ["base"]), VALUES, []).verdict == CONTRADICTED
    assert judge(_claim("worse", "lower", ["base"]), VALUES, []).verdict == HOLDS
    assert judge(_claim("better", "lower", ["base"]), VALUES, []).verdict == CONTRADICTED
    noise = judge(_claim("noise", "higher", ["base"]), VALUES, [])
    assert noise.verdict == "not distinguishable at 3 seeds"
    # sd of (1, -1, 0.5) is 1.0408: this n would have found only a true difference above ~3.2
    assert noise.pairs[0]["mde"] == pytest.approx(
        (t_df2(0.975) + t_df2(0.8)) * 1.040833 / math.sqrt(3), rel=1e-5
    )


def test_within_one_bleu4_equivalence() -> None:
    assert (
        judge(_claim("close", "same", ["base"], within=1.0), VALUES, []).verdict == HOLDS
    )  # CI [-0.25, 0.25]
    assert (
        judge(_claim("far", "same", ["base"], within=1.0), VALUES, []).verdict == CONTRADICTED
    )  # [2.5, 3.5]
    noisy = judge(_claim("noise", "same", ["base"], within=1.0), VALUES, []).verdict  # [-2.4, 2.7]
    assert noisy == "not distinguishable at 3 seeds"
    # A CI inside +-1 but touching the margin does not hold.
    from captioner.ablation import Interval

    assert verdict(Interval(3, 0.5, 0.1, 0.0, 1.0), "same", 1.0) == "not distinguishable at 3 seeds"


def test_claim_over_several_versions_holds_only_when_every_pair_does() -> None:
    assert judge(_claim("worse", "lower", ["base", "better"]), VALUES, []).verdict == HOLDS
    assert judge(_claim("better", "higher", ["base", "far"]), VALUES, []).verdict == CONTRADICTED
    assert judge(_claim("better", "higher", ["base", "close"]), VALUES, []).verdict == HOLDS
    assert judge(_claim("noise", "higher", ["base", "worse"]), VALUES, []).verdict.startswith(
        "not distinguishable"
    )


def test_same_direction_checked_on_object_f1() -> None:
    j = judge(_claim("better", "higher", ["base"]), VALUES, [], also=["test.object_f1"])
    assert j.also == {"test.object_f1": HOLDS}


def test_pairs_by_seed_and_skips_seeds_one_side_lacks() -> None:
    values = {"a": {"val.bleu4": {0: 1.0, 1: 2.0, 2: 3.0}}, "b": {"val.bleu4": {1: 2.5, 2: 3.5, 3: 9.0}}}
    j = judge(_claim("b", "higher", ["a"]), values, [])
    assert j.pairs[0]["seeds"] == [1, 2] and j.pairs[0]["diff"]["sd"] == 0.0
    one = {"a": {"val.bleu4": {0: 1.0}}, "b": {"val.bleu4": {0: 2.0}}}
    assert judge(_claim("b", "higher", ["a"]), one, []).verdict == "no verdict: 1 paired seed(s), need >= 2"


def test_refuses_verdicts_when_the_baseline_did_not_learn() -> None:
    smoke = {  # scale=smoke: BLEU-4 ~1e-8, nothing named
        "base": {
            "val.bleu4": {0: 7.25e-8, 1: 8.0e-8},
            "test.object_f1": {0: 0.02, 1: 0.03},
            "time.train_s": {0: 10.0, 1: 10.2},
        },
        "other": {"val.bleu4": {0: 9.0e-8, 1: 9.5e-8}, "time.train_s": {0: 12.0, 1: 12.1}},
    }
    failures = competence_failures(smoke, "base", {"val.bleu4": 1.0, "test.object_f1": 0.5})
    assert failures == ["base val.bleu4 mean 7.62e-08 < 1", "base test.object_f1 mean 0.025 < 0.5"]
    j = judge(_claim("other", "higher", ["base"]), smoke, failures)
    assert j.verdict.startswith("no verdict: baseline below competence (base val.bleu4 mean 7.62e-08 < 1")
    assert j.pairs and j.also == {}  # the numbers are still shown
    # Wall time needs no competence.
    timed = judge(_claim("base", "lower", ["other"], metric="time.train_s"), smoke, failures)
    assert timed.verdict == HOLDS
    # A competent baseline; a metric the runs do not log (object F1 on photos) is skipped.
    assert competence_failures(VALUES, "base", {"val.bleu4": 1.0, "test.object_f1": 0.5}) == []
    assert competence_failures({"base": {"val.bleu4": {0: 20.0}}}, "base", {"test.object_f1": 0.5}) == []
    assert competence_failures(VALUES, "missing", {"val.bleu4": 1.0}) == [
        "baseline missing has no finished run"
    ]


def test_untested_and_unrun_claims_keep_their_row() -> None:
    glove = Claim(id="glove", group="g", seed="...", untested="needs GloVe vectors")
    assert judge(glove, VALUES, []).verdict == "not tested: needs GloVe vectors"
    assert judge(_claim("v99", "higher", ["base"]), VALUES, []).verdict == "not run: v99"


def test_claims_file_errors_are_one_line() -> None:
    base = {"competence": {"val.bleu4": 1}, "groups": {"g": {"baseline": "a"}}}
    with pytest.raises(ConfigError, match="claims\\[0\\] \\(x\\): needs subject"):
        load_claims({**base, "claims": [{"id": "x", "group": "g", "seed": "s", "subject": "a"}]})
    with pytest.raises(ConfigError, match="within: goes with expect: same"):
        load_claims(
            {
                **base,
                "claims": [
                    {
                        "id": "x",
                        "group": "g",
                        "seed": "s",
                        "subject": "a",
                        "expect": "higher",
                        "than": ["b"],
                        "within": 1,
                    }
                ],
            }
        )
    with pytest.raises(ConfigError, match="group 'h' is not under groups"):
        load_claims({**base, "claims": [{"id": "x", "group": "h", "seed": "s", "untested": "why"}]})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        load_claims(
            {**base, "claims": [{"id": "x", "group": "g", "seed": "s", "untested": "why", "typo": 1}]}
        )
