"""Statistics over seeds for the seed-ablation sweeps: per-version t-intervals, paired claim verdicts.

A sweep runs every version at seeds 0..n-1. Per version and metric: the mean and a Student
t-interval over the seeds. A claim ("v19 beats v18 on val BLEU-4") is a paired comparison: the
per-seed differences subject - other (same seed, so same data order and initialisation where the
versions allow it), their mean and t-interval, and a verdict:

- ``holds``: the interval excludes 0 on the claimed side (for "same within m": it lies inside +-m);
- ``contradicted``: it excludes 0 on the other side (for "same within m": it lies outside +-m);
- ``not distinguishable at n seeds``: otherwise. The minimal detectable effect says how large a
  true difference these n seeds would have caught.

No verdict is given on quality metrics when the group's baseline did not learn (see
:func:`competence_failures`): differences between models that name no objects are noise.
The t quantiles come from scipy (a dependency of scikit-image and of us), not a hand-written table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from captioner.errors import ConfigError

HOLDS, CONTRADICTED = "holds", "contradicted"
EXPECTATIONS = ("higher", "lower", "same")
# Metrics a claim may name: best-validation scores, test scores of the best checkpoint, and the
# training wall and CPU time (sums of the epochs' training steps, logged to MLflow per epoch as
# time.epoch_train_s and time.epoch_train_cpu_s). CPU time is the one to compare on a shared machine.
TIME_METRIC = "time.train_s"
CPU_TIME_METRIC = "time.train_cpu_s"
TIME_METRICS = {TIME_METRIC: "time.epoch_train_s", CPU_TIME_METRIC: "time.epoch_train_cpu_s"}


def is_time_metric(metric: str) -> bool:
    """Whether ``metric`` is a training time (machine-dependent, never bit-reproducible)."""
    return metric in TIME_METRICS


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided t-interval of ``n`` values (low/high are NaN for n < 2)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width: t_{1-a/2, n-1} * sd / sqrt(n)."""
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float]:
        """Plain numbers for JSON."""
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci_low": self.low, "ci_high": self.high}


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean +- t_{(1+level)/2, n-1} * sd / sqrt(n), sd with n-1 in the denominator."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a paired two-sided t-test at ``alpha`` finds with ``power``.

    (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n), with ``sd`` the sd of the per-seed
    differences (the usual normal-theory approximation with t quantiles; NaN for n < 2).
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(
    effect: float, sd: float, expect: str, within: float | None = None, power: float = 0.8, most: int = 1000
) -> int | None:
    """Seeds a paired t-test needs to decide a claim with ``power`` when the true difference is ``effect``.

    The smallest n >= 2 with (t_{0.975,n-1} + t_{q,n-1}) * sd / sqrt(n) <= margin, ``sd`` the sd of the
    per-seed differences observed so far. For higher/lower, margin = |effect| and q = power (the MDE
    above, solved for n). For "same within m", the verdict needs the whole 95% interval inside +-m:
    margin = m - |effect| and q = (1 + power) / 2 (two one-sided tests, each missing half the time).
    None when no n up to ``most`` suffices (or the effect is 0 / the margin is gone).
    """
    if expect == "same":
        assert within is not None
        margin, q = within - abs(effect), (1 + power) / 2
    else:
        margin, q = abs(effect), power
    if not (math.isfinite(sd) and math.isfinite(margin)) or margin <= 0:
        return None
    if sd == 0:
        return 2

    # Coarse-to-fine: the left side falls monotonically in n, so bisect between 2 and `most`.
    def enough(n: int) -> bool:
        return (t_quantile(0.975, n - 1) + t_quantile(q, n - 1)) * sd / math.sqrt(n) <= margin

    if not enough(most):
        return None
    low, high = 2, most
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid + 1, high)
    return low


def undecided(n: int) -> str:
    """The third verdict, naming the number of seeds."""
    return f"not distinguishable at {n} seeds"


def verdict(diff: Interval, expect: str, within: float | None = None) -> str:
    """holds / contradicted / not distinguishable for a difference (subject - other) and its CI."""
    if diff.n < 2:
        return f"no verdict: {diff.n} paired seed(s), need >= 2"
    if expect == "higher":
        return HOLDS if diff.low > 0 else CONTRADICTED if diff.high < 0 else undecided(diff.n)
    if expect == "lower":
        return HOLDS if diff.high < 0 else CONTRADICTED if diff.low > 0 else undecided(diff.n)
    if expect == "same":
        assert within is not None
        if -within < diff.low and diff.high < within:
            return HOLDS
        return CONTRADICTED if diff.low >= within or diff.high <= -within else undecided(diff.n)
    raise ValueError(f"expect={expect!r}; one of {EXPECTATIONS}")


def paired(subject: Mapping[int, float], other: Mapping[int, float]) -> tuple[list[int], Interval]:
    """Seeds run by both versions and the t-interval of subject - other over them."""
    seeds = sorted(
        s
        for s in set(subject) & set(other)
        if math.isfinite(subject[s]) and math.isfinite(other[s])  # a failed metric is not a 0
    )
    return seeds, t_interval([subject[s] - other[s] for s in seeds])


@dataclass(frozen=True)
class Claim:
    """One statement of the seed's README, as a paired comparison (or a row that says why not)."""

    id: str
    group: str
    seed: str  # the seed's words
    seed_numbers: str = ""
    subject: str | None = None
    expect: str | None = None  # higher | lower | same (than each of `than`)
    than: tuple[str, ...] = ()
    within: float | None = None  # for "same": the equivalence margin
    metric: str = "val.bleu4"
    untested: str | None = None  # why this claim has no comparison
    note: str = ""

    @property
    def versions(self) -> list[str]:
        """Every version the claim compares."""
        return [self.subject, *self.than] if self.subject else []

    @property
    def text(self) -> str:
        """The claim in our terms, e.g. 'v19 higher than v18 (val.bleu4)'."""
        if self.untested:
            return "not tested"
        margin = f" within {self.within:g}" if self.expect == "same" else ""
        verb = {"higher": "higher than", "lower": "lower than", "same": "same as"}[self.expect or ""]
        return f"{self.subject} {verb} {', '.join(self.than)}{margin} ({self.metric})"


def load_claims(data: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str], list[Claim]]:
    """(competence thresholds, baseline version per group, claims) from sweeps/claims.yaml's content."""
    competence = {str(k): float(v) for k, v in data["competence"].items()}
    baselines = {str(g): str(v["baseline"]) for g, v in data["groups"].items()}
    claims = []
    for i, raw in enumerate(data["claims"]):
        raw = dict(raw)
        where = f"claims[{i}] ({raw.get('id', '?')})"
        if "than" in raw:
            raw["than"] = tuple(raw["than"])
        try:
            claim = Claim(**raw)
        except TypeError as err:
            raise ConfigError(f"{where}: {err}; keys are those of captioner.ablation.Claim") from err
        if claim.group not in baselines:
            raise ConfigError(
                f"{where}: group {claim.group!r} is not under groups:; add it with its baseline"
            )
        if claim.untested is None:
            if claim.expect not in EXPECTATIONS or not claim.subject or not claim.than:
                raise ConfigError(f"{where}: needs subject, than and expect in {EXPECTATIONS} (or untested:)")
            if (claim.expect == "same") != (claim.within is not None):
                raise ConfigError(f"{where}: within: goes with expect: same, and only with it")
        claims.append(claim)
    ids = [c.id for c in claims]
    dup = sorted({x for x in ids if ids.count(x) > 1})
    if dup:
        raise ConfigError(f"claims: ids {dup} repeat; make each id unique")
    return competence, baselines, claims


# values[version][metric][seed] -> number
Values = Mapping[str, Mapping[str, Mapping[int, float]]]


def summarize_versions(values: Values, metrics: Sequence[str]) -> dict[str, dict[str, Interval]]:
    """Per version and metric, the t-interval over its seeds."""
    return {v: {m: t_interval(list(values[v].get(m, {}).values())) for m in metrics} for v in values}


def competence_failures(values: Values, baseline: str, thresholds: Mapping[str, float]) -> list[str]:
    """Why the baseline has not learned ('v15 val.bleu4 mean 1e-08 < 1'); empty when it has.

    A threshold on a metric the runs do not log (object F1 on photos) is skipped; a baseline that
    did not run at all fails.
    """
    if baseline not in values:
        return [f"baseline {baseline} has no finished run"]
    out = []
    for metric, least in thresholds.items():
        seen = [x for x in values[baseline].get(metric, {}).values() if math.isfinite(x)]
        if seen and math.fsum(seen) / len(seen) < least:
            out.append(f"{baseline} {metric} mean {math.fsum(seen) / len(seen):.3g} < {least:g}")
    return out


@dataclass
class Judgement:
    """A claim's comparisons and verdict on its metric, plus directional checks on other metrics."""

    claim: Claim
    verdict: str
    pairs: list[dict[str, Any]] = field(default_factory=list)
    also: dict[str, str] = field(default_factory=dict)  # metric -> verdict of the same direction

    @property
    def seeds_needed(self) -> int | None:
        """For an undecided claim, the seeds its hardest undecided pair needs (None: more than any tried)."""
        if not self.verdict.startswith("not distinguishable"):
            return None
        needed = [p["seeds_needed"] for p in self.pairs if p["verdict"] != HOLDS]
        return None if None in needed else max(needed)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        c = self.claim
        return {
            "id": c.id,
            "group": c.group,
            "seed": c.seed,
            "seed_numbers": c.seed_numbers,
            "claim": c.text,
            "metric": c.metric,
            "note": c.note or c.untested or "",
            "verdict": self.verdict,
            "pairs": self.pairs,
            "seeds_needed": self.seeds_needed,
            "also": self.also,
        }


def combine(verdicts: Sequence[str]) -> str:
    """A claim over several pairs ("v45 is the worst") holds when every pair holds; one contradiction contradicts it."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return next((v for v in verdicts if v != HOLDS), "no verdict")


# The metric the seed's README reports per version (its val BLEU-4): the claimed effect sizes are on it.
SEED_METRIC = "val.bleu4"


def claimed_effect(claim: Claim, other: str, seed_scores: Mapping[str, float]) -> float | None:
    """The seed's own difference subject - other on the claim's metric, or None when it reports none."""
    if claim.metric != SEED_METRIC or claim.subject is None:
        return None
    diff = seed_scores.get(claim.subject, math.nan) - seed_scores.get(other, math.nan)
    return diff if math.isfinite(diff) else None


def judge(
    claim: Claim,
    values: Values,
    competence: Sequence[str],
    also: Sequence[str] = (),
    seed_scores: Mapping[str, float] | None = None,
) -> Judgement:
    """The claim's verdict on ``values``; ``competence``: the baseline's failures (no quality verdict then).

    Each pair also carries the seeds a paired t-test would need (:func:`seeds_needed`) for the seed's own
    claimed effect (``seed_scores``: its reported score per version) or, where it reports none, for the
    difference observed here; an undecided claim needs the most of its undecided pairs.
    """
    if claim.untested:
        return Judgement(claim, f"not tested: {claim.untested}")
    missing = [v for v in claim.versions if v not in values]
    if missing:
        return Judgement(claim, f"not run: {', '.join(missing)}")
    pairs, verdicts = [], []
    for other in claim.than:
        seeds, diff = paired(values[claim.subject].get(claim.metric, {}), values[other].get(claim.metric, {}))
        v = verdict(diff, claim.expect, claim.within)
        verdicts.append(v)
        # "same" claims no difference at all; the others their seed's size, else the one seen here.
        seed_effect = 0.0 if claim.expect == "same" else claimed_effect(claim, other, seed_scores or {})
        effect = seed_effect if seed_effect is not None else diff.mean
        pairs.append(
            {
                "subject": claim.subject,
                "other": other,
                "seeds": seeds,
                "diff": diff.as_dict(),
                "mde": minimum_detectable_effect(diff.sd, diff.n),
                "verdict": v,
                "effect": effect,
                "effect_from": "observed" if seed_effect is None else "seed",
                "seeds_needed": seeds_needed(effect, diff.sd, claim.expect, claim.within),
            }
        )
    result = combine(verdicts)
    if competence and not is_time_metric(claim.metric):
        result = "no verdict: baseline below competence (" + "; ".join(competence) + ")"
    judgement = Judgement(claim, result, pairs)
    if claim.expect in ("higher", "lower") and not is_time_metric(claim.metric) and not competence:
        for metric in also:
            checks = [
                verdict(
                    paired(values[claim.subject].get(metric, {}), values[o].get(metric, {}))[1], claim.expect
                )
                for o in claim.than
            ]
            judgement.also[metric] = combine(checks)
    return judgement
