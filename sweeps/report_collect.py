"""Collect a seed-ablation sweep: its per-seed runs from MLflow or a committed report, summarized as plain data.

Each run's numbers are taken at its best validation (val BLEU-4 and that validation's CIDEr-D and object
F1), with its test scores and training wall time; ``summarize`` adds per-version means and 95% intervals
and a verdict per claim of sweeps/claims.yaml (captioner.ablation).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from captioner.ablation import (
    TIME_METRIC,
    TIME_METRICS,
    Judgement,
    competence_failures,
    is_time_metric,
    judge,
    load_claims,
    summarize_versions,
)

CLAIMS = Path(__file__).with_name("claims.yaml")
VAL_AT_BEST = ("bleu4", "cider_d", "object_f1")
# Directional claims on val BLEU-4 are also checked on these (BLEU-4 rewards fluent templates).
ALSO = ("val.cider_d", "test.object_f1")


def collect(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """The latest study's finished child run per (version, seed): metrics at its best validation, test, time."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no MLflow experiment {experiment!r} in {tracking_uri}; run the sweep first")
    found = client.search_runs(
        [exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"]
    )
    # A sweep rerun after a config change is a new Optuna study in the same experiment: report the
    # latest study's trials only, never a mix of two configs.
    study = next((r.data.tags.get("sweep.study") for r in found if r.data.tags.get("seed_version")), None)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for run in found:
        version = run.data.tags.get("seed_version")
        if not version or run.data.tags.get("sweep.study") != study:
            continue  # the study's parent run, a version summary, or an earlier study's trial
        seed = int(run.data.params.get("trainer.seed", 0))
        if (version, seed) in runs:
            continue  # an older run of the same point
        rid = run.info.run_id
        objective = run.data.params.get("trainer.early_stop.metric", "bleu4")
        sign = -1.0 if run.data.params.get("trainer.early_stop.mode", "max") == "min" else 1.0
        history = {k: client.get_metric_history(rid, f"val.{k}") for k in {objective, *VAL_AT_BEST}}
        if not history[objective]:
            continue  # no validation finished
        # The loop keeps the first epoch that reached the best value (strictly better replaces).
        validations = sorted(history[objective], key=lambda m: m.step)
        best = max(validations, key=lambda m: sign * m.value)
        metrics = {
            f"val.{k}": next((m.value for m in history[k] if m.step == best.step), math.nan)
            for k in VAL_AT_BEST
        }
        metrics.update({k: v for k, v in run.data.metrics.items() if k.startswith("test.")})
        for total, per_epoch in TIME_METRICS.items():
            epochs = client.get_metric_history(rid, per_epoch)
            if epochs:  # CPU time since 2026-12-06; earlier runs have wall time only
                metrics[total] = math.fsum(m.value for m in epochs)
            elif total == TIME_METRIC:
                metrics[total] = math.nan
        runs[(version, seed)] = {
            "version": version,
            "seed": seed,
            "run_id": rid,
            "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
            "flags": run.data.tags.get("seed_flags", ""),
            "seed_bleu4": run.data.tags.get("seed_bleu4", "n/a"),
            "study": run.data.tags.get("sweep.study"),
            "commit": run.data.tags.get("mlflow.source.git.commit"),
            "dirty": run.data.tags.get("git.dirty") == "true",
            # "3 of 4": the best validation was the 3rd of 4 (the last one: still improving).
            "best_validation": f"{validations.index(best) + 1} of {len(validations)}",
            "start": run.info.start_time,
            "end": run.info.end_time,
            "metrics": metrics,
        }
    return sorted(runs.values(), key=lambda r: (r["version"], r["seed"]))


def values_of(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[int, float]]]:
    """values[version][metric][seed]."""
    out: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        for metric, value in r["metrics"].items():
            if value is not None and math.isfinite(value):  # a metric the run did not log is no value
                out[r["version"]][metric][r["seed"]] = float(value)
    return out


def summarize(
    group: str, scale: str, runs: list[dict[str, Any]], claims_file: Path = CLAIMS
) -> dict[str, Any]:
    """Everything the report shows, as plain data: per-version intervals, per-claim verdicts, wall time."""
    thresholds, baselines, claims = load_claims(OmegaConf.to_container(OmegaConf.load(claims_file)))
    values = values_of(runs)
    metrics = sorted({m for r in runs for m in r["metrics"]})
    stats = summarize_versions(values, metrics)
    baseline = baselines.get(group)
    failures = competence_failures(values, baseline, thresholds) if baseline else []
    first = {r["version"]: r for r in runs}
    seed_scores = {v: as_float(r["seed_bleu4"]) for v, r in first.items()}
    judged: list[Judgement] = [
        judge(c, values, failures, ALSO, seed_scores) for c in claims if c.group == group
    ]
    parts = sittings(runs)
    return {
        "group": group,
        "scale": scale,
        "statistics": "mean and 95% Student t-interval over seeds (scipy.stats.t); claims: per-seed "
        "differences subject - other, their mean and 95% t-interval; MDE: (t_{0.975,n-1} + t_{0.8,n-1}) "
        "* sd_diff / sqrt(n), the smallest true difference a paired t-test finds with 80% power",
        "baseline": baseline,
        "competence": {"thresholds": thresholds, "failures": failures},
        "seeds": sorted({r["seed"] for r in runs}),
        "study": runs[0].get("study") if runs else None,
        "commits": sorted({r.get("commit") or "unknown" for r in runs}),
        "dirty": any(r.get("dirty") for r in runs),
        "versions": {
            v: {
                "flags": first[v]["flags"],
                "seed_bleu4": first[v]["seed_bleu4"],
                "metrics": {m: i.as_dict() for m, i in stats[v].items()},
            }
            for v in sorted(stats)
        },
        "claims": [j.as_dict() for j in judged],
        # The group's wall time: each sitting's, added up (seeds 3-4 may run days after seeds 0-2).
        "wall_time": {
            "runs_s": math.fsum(p["runs_s"] for p in parts),
            "first_start_to_last_end_s": math.fsum(p["first_start_to_last_end_s"] for p in parts),
            "n_runs": len(runs),
        },
        "sittings": parts,
        "runs": runs,
    }


def sittings(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs grouped by Optuna study (one sweep command's sitting), in order: seeds, runs, wall time."""
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_study[str(r.get("study"))].append(r)
    out = []
    for study, mine in by_study.items():
        timed = [r for r in mine if r["start"] is not None and r["end"] is not None]
        starts, ends = [r["start"] for r in timed], [r["end"] for r in timed]
        out.append(
            {
                "study": study,
                "seeds": sorted({r["seed"] for r in mine}),
                "n_runs": len(mine),
                "commits": sorted({r.get("commit") or "unknown" for r in mine}),
                "runs_s": math.fsum((r["end"] - r["start"]) / 1000 for r in timed),
                "first_start_to_last_end_s": (max(ends) - min(starts)) / 1000 if timed else math.nan,
            }
        )
    return sorted(out, key=lambda p: (p["seeds"], p["study"]))


# Recorded per run and equal whenever the same version and seed run again (test.meteor left the
# scale's evaluation at bb5eb11; time and ids are the sitting's own).
def _numbers(run: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in run["metrics"].items() if not is_time_metric(k)}


def same_number(a: float, b: float) -> bool:
    """Equal to the bit, NaN (a metric with no value, e.g. no size words said) equal to NaN."""
    return a == b or (math.isnan(a) and math.isnan(b))


def merge(committed: list[dict[str, Any]], new: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """``committed`` runs plus ``new`` ones; a (version, seed) in both must have the same numbers.

    A run's numbers depend only on its version and seed (one thread per run), so a rerun that
    differs means the code or the recipe changed since the committed report: that stops the report
    with every difference named, never a silent mix.
    """
    old = {(r["version"], r["seed"]): r for r in committed}
    changed = []
    for r in new:
        before = old.get((r["version"], r["seed"]))
        if before is None:
            continue
        a, b = _numbers(before), _numbers(r)
        changed += [
            f"{r['version']} seed {r['seed']} {k}: {a[k]!r} -> {b[k]!r}"
            for k in sorted(set(a) & set(b))
            if not same_number(a[k], b[k])
        ]
    if changed:
        raise SystemExit(
            f"error: {len(changed)} committed per-seed numbers in {source} changed: "
            + "; ".join(changed[:5])
            + ("; ..." if len(changed) > 5 else "")
            + ". Run the committed commit's code, or report the group afresh without --merge"
        )
    mine = {(r["version"], r["seed"]) for r in new}
    return sorted(
        [*new, *(r for r in committed if (r["version"], r["seed"]) not in mine)],
        key=lambda r: (r["version"], r["seed"]),
    )


def read_report(path: str, option: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(group, scale, per-seed runs) of a report JSON this script wrote; one-line error otherwise."""
    try:
        old = json.loads(Path(path).read_text())
        return old["group"], old["scale"], old["runs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(
            f"error: {option} {path!r} is not a report JSON written by this script ({err!r}); "
            "pass sweeps/results/<group>_<scale>.json"
        ) from None


def as_float(text: str) -> float:
    """A number tag (e.g. the seed's reported BLEU-4) as a float, NaN where it is "n/a"."""
    try:
        return float(text)
    except ValueError:
        return math.nan
