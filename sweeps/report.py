"""Report a seed-ablation sweep over seeds: per-version means and CIs, a verdict per seed claim.

    python sweeps/report.py --experiment sweep-teacher_forcing-cpu [--tracking-uri sqlite:///mlflow.db]
    python sweeps/report.py --rejudge sweeps/results/teacher_forcing_cpu.json   # claims.yaml again, no MLflow
    python sweeps/report.py --overview cpu        # every group against the scale's targets

Reads the finished child runs of the sweep's MLflow experiment (the latest one per version and
``trainer.seed``), takes each run's best validation (val BLEU-4 and that validation's CIDEr-D and
object F1), its test scores and its training wall time, and writes sweeps/results/<group>_<scale>
.md, .json and .png: mean and 95% t-interval per version, and each claim of sweeps/claims.yaml as a
paired comparison with its verdict (captioner.ablation). The same files go to the study's MLflow
parent run as artifacts, with the per-version means and intervals as metrics
(``v42.val_bleu4.mean``, ``...ci_low``, ``...ci_high``) and the verdicts as tags. Under the parent,
one summary run per version (``v42 mean of 3 seeds``, tag ``sweep.summary``) carries that version's
means, intervals and the seed's reported BLEU-4 under the same metric names, so MLflow's compare page
shows the versions side by side; the report prints that page's link.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from captioner.ablation import (
    TIME_METRIC,
    Interval,
    Judgement,
    competence_failures,
    judge,
    load_claims,
    summarize_versions,
)

CLAIMS = Path(__file__).with_name("claims.yaml")
# Shown per version, in this order (JSON holds every collected metric).
SHOWN = {
    "val.bleu4": "val BLEU-4",
    "val.cider_d": "val CIDEr-D",
    "test.object_f1": "test object F1",
    TIME_METRIC: "train time (s)",
}
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
        epochs = client.get_metric_history(rid, "time.epoch_train_s")
        metrics[TIME_METRIC] = math.fsum(m.value for m in epochs) if epochs else math.nan
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


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x != 0 and abs(x) < 10 ** (-digits):
        return f"{x:.1e}"  # 7.25e-08 must not read as 0.00
    return f"{x:.{digits}f}"


def _digits(metric: str) -> int:
    return 3 if "object_f1" in metric else 1 if metric == TIME_METRIC else 2


def _ci(i: Interval, digits: int) -> str:
    if i.n == 0:
        return "–"
    if i.n < 2:
        return f"{_fmt(i.mean, digits)} (1 seed)"
    return f"{_fmt(i.mean, digits)} [{_fmt(i.low, digits)}, {_fmt(i.high, digits)}]"


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
    seed_scores = {v: _float(r["seed_bleu4"]) for v, r in first.items()}
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
    return {k: v for k, v in run["metrics"].items() if k != TIME_METRIC}


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


def markdown(s: dict[str, Any]) -> str:
    """The report as Markdown."""
    group, scale, w = s["group"], s["scale"], s["wall_time"]
    seeds = s["seeds"]
    lines = [
        f"# Seed ablation `{group}` at scale `{scale}`",
        "",
        f"{w['n_runs']} runs ({len(s['versions'])} versions x seeds {', '.join(map(str, seeds))}). "
        f"Wall time of the group: {w['runs_s'] / 60:.1f} min of runs "
        f"({w['first_start_to_last_end_s'] / 60:.1f} min from the first start to the last end"
        + (", sittings added up)." if len(s.get("sittings", [])) > 1 else ")."),
        "",
        *(f"- {line}" for line in _sitting_lines(s)),
        "",
        *(["Runs with uncommitted changes in the tree are among them.", ""] if s.get("dirty") else []),
        f"Statistics: {s['statistics']}. {VERDICTS}",
        "",
    ]
    comp = s["competence"]
    rule = ", ".join(f"{k} >= {v:g}" for k, v in comp["thresholds"].items())
    if comp["failures"]:
        lines += [
            f"**No verdict: baseline below competence** ({rule} for the baseline {s['baseline']}): "
            + "; ".join(comp["failures"])
            + ". Quality claims get no verdict; wall-time claims still do.",
            "",
        ]
    else:
        lines += [f"Baseline {s['baseline']} is competent ({rule}).", ""]
    lines += [
        "## Per version: mean [95% CI] over seeds",
        "",
        *versions_table(s),
        "",
        "## Claims",
        "",
        *claims_table(s),
    ]
    lines += [
        "",
        "## Per seed",
        "",
        "| version | seed | best validation | " + " | ".join(SHOWN.values()) + " | MLflow run |",
        "|---|---|---|" + "---|" * len(SHOWN) + "---|",
    ]
    for r in s["runs"]:
        cells = [_fmt(r["metrics"].get(m, math.nan), _digits(m)) for m in SHOWN]
        lines.append(
            f"| {r['version']} | {r['seed']} | {r['best_validation']} | "
            + " | ".join(cells)
            + f" | {r['run_id'][:8]} |"
        )
    return "\n".join(lines) + "\n"


VERDICTS = (
    "Verdicts: `holds` (the CI excludes 0 on the claimed side; for 'same within m': it lies inside +-m), "
    "`contradicted` (it excludes 0 on the other side; lies outside +-m), `not distinguishable at n seeds` "
    "(otherwise)."
)


def versions_table(s: dict[str, Any]) -> list[str]:
    """Markdown rows: per version of a report, its flags, seeds and mean [95% CI] of each shown metric."""
    lines = [
        "| version | seed flags | n | " + " | ".join(SHOWN.values()) + " | seed's val BLEU-4 |",
        "|---|---|---|" + "---|" * len(SHOWN) + "---|",
    ]
    for v, row in s["versions"].items():
        stats = {m: Interval(**_interval_args(d)) for m, d in row["metrics"].items()}
        n = max((i.n for i in stats.values()), default=0)
        cells = [_ci(stats[m], _digits(m)) if m in stats else "–" for m in SHOWN]
        lines.append(f"| {v} | `{row['flags']}` | {n} | " + " | ".join(cells) + f" | {row['seed_bleu4']} |")
    return lines


def claims_table(s: dict[str, Any]) -> list[str]:
    """Markdown rows: per claim of a report, the seed's words, the paired differences, MDE, verdict, seeds to decide."""
    lines = [
        "| claim | the seed says | compared | difference [95% CI] | MDE (80% power) | verdict | "
        "seeds to decide (80% power) | same direction on val CIDEr-D | on test object F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in s["claims"]:
        digits = _digits(c["metric"])
        diffs = "<br>".join(pair_difference(p, digits) for p in c["pairs"])
        mdes = "<br>".join(_fmt(p["mde"], digits) for p in c["pairs"])
        seed = c["seed"] + (f" ({c['seed_numbers']})" if c["seed_numbers"] else "")
        what = c["claim"] + (f"; {c['note']}" if c["note"] and c["pairs"] else "")
        also = [c["also"].get(m, "–") for m in ALSO]
        lines.append(
            f"| {c['id']} | {seed} | {what} | {diffs or '–'} | {mdes or '–'} | **{c['verdict']}** | "
            + f"{_seeds_to_decide(c)} | "
            + " | ".join(also)
            + " |"
        )
    return lines


def pair_difference(p: dict[str, Any], digits: int) -> str:
    """'v17 - v15: -1.15 [-7.09, 4.79]': one pair of a claim, its mean difference and 95% CI."""
    return f"{p['subject']} - {p['other']}: {_ci(Interval(**_interval_args(p['diff'])), digits)}"


def _sitting_lines(s: dict[str, Any]) -> list[str]:
    """One line per sitting: its seeds, the command that runs them again, its study, commit and wall time."""
    group, scale, lines = s["group"], s["scale"], []
    report = f"python sweeps/report.py --experiment sweep-{group}-{scale}"
    for p in s.get("sittings") or [
        {**s["wall_time"], "study": s.get("study"), "seeds": s["seeds"], "commits": s.get("commits", [])}
    ]:
        seeds, command = p["seeds"], f"python train.py -m sweep={group} scale={scale}"
        if seeds and seeds[0] > 0:  # seeds added to a committed report
            command += f" sweep.first_seed={seeds[0]} sweep.seeds={seeds[-1] + 1}"
            then = f"{report} --merge sweeps/results/{group}_{scale}.json"
        else:
            then = report
        lines.append(
            f"Seeds {', '.join(map(str, seeds))}: `{command}` (one worker per core, each with "
            f"`trainer.threads=1`), then `{then}`. Optuna study `{p['study']}`, commit "
            f"{', '.join(c[:7] for c in p['commits'])}; {p['first_start_to_last_end_s'] / 60:.1f} min from "
            f"the first start to the last end ({p['runs_s'] / 60:.1f} min of runs)."
        )
    return lines


def _seeds_to_decide(c: dict[str, Any]) -> str:
    """'12 (seed's effect)' for an undecided claim: seeds for 80% power at the effect its pairs assume."""
    if not c["verdict"].startswith("not distinguishable"):
        return "–"
    n = c.get("seeds_needed")
    sources = sorted({p.get("effect_from", "observed") for p in c["pairs"] if p["verdict"] != "holds"})
    where = " and ".join("the seed's effect" if x == "seed" else "the observed effect" for x in sources)
    return f"{'> 1000' if n is None else n} ({where})"


def _interval_args(d: dict[str, float]) -> dict[str, float]:
    return {"n": int(d["n"]), "mean": d["mean"], "sd": d["sd"], "low": d["ci_low"], "high": d["ci_high"]}


def plot(s: dict[str, Any], path: Path) -> None:
    """Mean and 95% CI per version (error bars) over the per-seed points, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = list(s["versions"])
    metrics = [m for m in SHOWN if m != TIME_METRIC]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(versions) * len(metrics) / 2, 3.4))
    for ax, metric in zip(axes, metrics):
        for x, v in enumerate(versions):
            d = s["versions"][v]["metrics"].get(metric)
            if d is None or d["n"] == 0:
                continue
            seeds = [r["metrics"].get(metric, math.nan) for r in s["runs"] if r["version"] == v]
            ax.plot([x] * len(seeds), seeds, ".", color="0.6", zorder=1)
            err = None if d["n"] < 2 else [[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]]
            ax.errorbar([x], [d["mean"]], yerr=err, fmt="o", color="C0", capsize=4, zorder=2)
        if metric == "val.bleu4":
            seed = [_float(s["versions"][v]["seed_bleu4"]) for v in versions]
            ax.plot(range(len(versions)), seed, "x", color="C3", label="seed (COCO subset)")
            ax.legend(fontsize=7)
        ax.set_xlim(-0.5, len(versions) - 0.5)
        ax.set_xticks(range(len(versions)), versions, rotation=45 if len(versions) > 5 else 0, fontsize=8)
        ax.set_title(SHOWN[metric], fontsize=9)
    n = len(s["seeds"])
    fig.suptitle(
        f"{s['group']} at {s['scale']}: mean and 95% CI over {n} seed(s) (grey: each seed)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def write(s: dict[str, Any], out: Path) -> list[Path]:
    """Write ``<out>.md``, ``<out>.json`` and ``<out>.png``; return their paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".md"), out.with_suffix(".json"), out.with_suffix(".png")]
    paths[0].write_text(markdown(s))
    paths[1].write_text(json.dumps(s, indent=1, allow_nan=True) + "\n")
    plot(s, paths[2])
    return paths


def log_to_parent(tracking_uri: str, s: dict[str, Any], files: list[Path]) -> str | None:
    """Put the report on the study's MLflow parent run: files, per-version mean/CI metrics, verdict tags."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    latest = max(s["runs"], key=lambda r: r["start"] or 0, default=None)
    parent = latest and latest["parent_run_id"]
    if not parent:
        return None
    client = MlflowClient(tracking_uri=tracking_uri)
    metrics: dict[str, float] = {}
    for v, row in s["versions"].items():
        for m, d in row["metrics"].items():
            if m not in SHOWN:
                continue  # a column per version and shown metric is what the UI can compare
            key = f"{v}.{m.replace('.', '_', 1)}"  # v42.val_bleu4.mean: one column per version and metric
            metrics.update(
                {f"{key}.mean": d["mean"], f"{key}.ci_low": d["ci_low"], f"{key}.ci_high": d["ci_high"]}
            )
        metrics[f"{v}.n_seeds"] = max((d["n"] for d in row["metrics"].values()), default=0)
        metrics[f"{v}.seed_bleu4"] = _float(row["seed_bleu4"])
    for c in s["claims"]:
        for p in c["pairs"]:
            key = f"claim.{c['id']}.{p['other']}"
            metrics.update({f"{key}.diff": p["diff"]["mean"], f"{key}.ci_low": p["diff"]["ci_low"]})
            metrics[f"{key}.ci_high"] = p["diff"]["ci_high"]
    metrics["group.wall_time_s"] = s["wall_time"]["runs_s"]
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
    tags = [RunTag(f"claim.{c['id']}", c["verdict"][:5000]) for c in s["claims"]]
    for i in range(0, len(batch), 1000):  # MLflow's batch limit
        client.log_batch(parent, metrics=batch[i : i + 1000])
    client.log_batch(parent, tags=tags)
    for path in files:
        client.log_artifact(parent, str(path), artifact_path="report")
    log_version_summaries(client, parent, s)
    return parent


SUMMARY_TAG = "sweep.summary"  # on a version's summary run: the version (never seed_version: not a trial)


def log_version_summaries(client: Any, parent: str, s: dict[str, Any]) -> dict[str, str]:
    """One finished child run of ``parent`` per version with its mean/CI metrics; ``{version: run id}``.

    Metrics: ``bleu4_val_mean`` and ``bleu4_val_ci95`` (the 95% t-interval's half-width), the same for
    ``cider_d_val``, ``object_f1_test`` and ``time_train_s``, and ``bleu4_val_seed``, the seed's reported
    number.

    A rerun of the report updates the same runs (found by their tag), so the UI never shows stale twins.
    """
    from mlflow.entities import Metric, Param

    exp_id, ids = _summary_runs(client, parent)
    now = int(time.time() * 1000)
    for v, row in s["versions"].items():
        n = max((d["n"] for d in row["metrics"].values()), default=0)
        name = f"{v} mean of {n} seeds"
        if v in ids:
            client.update_run(ids[v], name=name)
        else:
            tags = {"mlflow.parentRunId": parent, SUMMARY_TAG: v}
            ids[v] = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            # params are write-once in MLflow: the compare page's Parameters table says what each version is
            client.log_batch(ids[v], params=[Param("seed_flags", row["flags"][:6000] or "-")])
        client.set_tag(ids[v], "n_seeds", str(n))
        # Names that sort BLEU-4's mean, half-width and the seed's number together (the compare page
        # lists metrics alphabetically in a short scrolling table): bleu4_val_ci95, _mean, _seed, ...
        metrics = {"bleu4_val_seed": _float(row["seed_bleu4"])}
        for m, d in row["metrics"].items():
            if m in SHOWN:
                split, name = m.split(".", 1)
                key = f"{name}_{split}" if split in ("val", "test") else m.replace(".", "_")
                metrics.update({f"{key}_mean": d["mean"], f"{key}_ci95": d["ci_high"] - d["mean"]})
        batch = [
            Metric(k, float(x), now, 0) for k, x in metrics.items() if x is not None and math.isfinite(x)
        ]
        client.log_batch(ids[v], metrics=batch)
        client.set_terminated(ids[v])
    return ids


def compare_url(tracking_uri: str, parent: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI page comparing the parent's version summary runs (``make ui`` serves ``ui``)."""
    from urllib.parse import quote

    from mlflow.tracking import MlflowClient

    exp_id, ids = _summary_runs(MlflowClient(tracking_uri=tracking_uri), parent)
    runs = quote(json.dumps([ids[v] for v in sorted(ids)], separators=(",", ":")))
    return f"{ui}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([exp_id]))}"


def _summary_runs(client: Any, parent: str) -> tuple[str, dict[str, str]]:
    """The parent's experiment id and its version summary runs, ``{version: run id}``."""
    exp_id = client.get_run(parent).info.experiment_id
    found = client.search_runs(
        [exp_id], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{SUMMARY_TAG}` != ''"
    )
    return exp_id, {r.data.tags[SUMMARY_TAG]: r.info.run_id for r in found}


VERDICT_KINDS = ("holds", "contradicted", "not distinguishable", "not tested", "no verdict")


def _verdict_counts(claims: list[dict[str, Any]]) -> str:
    counts = defaultdict(int)
    for c in claims:
        counts[next((k for k in VERDICT_KINDS if c["verdict"].startswith(k)), c["verdict"])] += 1
    return ", ".join(f"{counts[k]} {k}" for k in VERDICT_KINDS if counts[k])


def _still_improving(runs: list[dict[str, Any]], version: str) -> str:
    """'1 of 3': how many of the version's runs had their best validation at the last epoch."""
    mine = [r["best_validation"].split(" of ") for r in runs if r["version"] == version]
    last = sum(1 for best in mine if len(best) == 2 and best[0] == best[1])
    return f"{last} of {len(mine)}"


ARCHIVE = "{n}seeds"  # sweeps/results/3seeds/: each group's report before seeds were added to it


def _decisive(claims: list[dict[str, Any]]) -> str:
    """'3 of 4': claims that hold or are contradicted, of those tested."""
    tested = [c for c in claims if not c["verdict"].startswith(("not tested", "not run"))]
    decided = [c for c in tested if c["verdict"] in ("holds", "contradicted")]
    return f"{len(decided)} of {len(tested)}"


def _wall_cell(s: dict[str, Any], wall_target: float | None) -> str:
    """The first sitting's wall time against the target, then what each later sitting added."""
    parts = s.get("sittings") or [{**s["wall_time"], "seeds": s["seeds"]}]
    first = parts[0]["first_start_to_last_end_s"] / 60
    cell = _fmt(first, 1) + (f" (over {wall_target:g})" if wall_target and first > wall_target else "")
    for p in parts[1:]:
        cell += f" + {_fmt(p['first_start_to_last_end_s'] / 60, 1)} (seeds {p['seeds'][0]}-{p['seeds'][-1]})"
    return cell


def overview(scale: str, results: Path = Path("sweeps/results"), claims_file: Path = CLAIMS) -> str:
    """One Markdown table over every group's report at ``scale``, against the scale's targets in claims.yaml,
    with the decisive verdicts at each number of seeds reported and the seeds every undecided claim needs."""
    data = OmegaConf.to_container(OmegaConf.load(claims_file))
    targets = data.get("targets", {}).get(scale, {})
    f1_target, wall_target = targets.get("baseline_test_object_f1"), targets.get("wall_min")
    lines = [
        f"# Seed ablations at scale `{scale}`: every group against the scale's targets",
        "",
        f"Written by `python sweeps/report.py --overview {scale}` from `sweeps/results/<group>_{scale}.json` "
        f"(and `sweeps/results/{ARCHIVE.format(n='<n>')}/`: a group's report before seeds were added). "
        + (
            f"Targets (sweeps/claims.yaml): the baseline's mean test object F1 >= {f1_target:g}; "
            f"the group's wall time at its first seeds (first run's start to last run's end) <= "
            f"{wall_target:g} min."
            if targets
            else "This scale has no targets in sweeps/claims.yaml."
        ),
        "Decisive: a claim that holds or is contradicted, of the claims tested.",
        "",
        "| group | runs | commit | wall time (min) | baseline | baseline test object F1 [95% CI] | "
        "baseline runs best at the last epoch | verdicts | decisive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    undecided = []
    for group, spec in data["groups"].items():
        path = results / f"{group}_{scale}.json"
        if not path.exists():
            lines.append(f"| {group} | no report | | | {spec['baseline']} | | | | |")
            continue
        s = json.loads(path.read_text())
        f1 = s["versions"].get(s["baseline"], {}).get("metrics", {}).get("test.object_f1")
        f1_cell = _ci(Interval(**_interval_args(f1)), 3) if f1 else "–"
        if f1 and f1_target and f1["mean"] < f1_target:
            f1_cell += f" (under {f1_target:g})"
        commits = ", ".join(c[:7] for c in s.get("commits", [])) or "not recorded"
        commits += " + changes" if s.get("dirty") else ""
        decisive = [
            f"{len(a['seeds'])} seeds: {_decisive(a['claims'])}"
            for n in range(2, len(s["seeds"]))
            if (archived := results / ARCHIVE.format(n=n) / path.name).exists()
            for a in [json.loads(archived.read_text())]
        ]
        decisive.append(f"{len(s['seeds'])} seeds: {_decisive(s['claims'])}")
        lines.append(
            f"| {group} | {s['wall_time']['n_runs']} ({len(s['versions'])} x {len(s['seeds'])} seeds) | "
            f"{commits} | {_wall_cell(s, wall_target)} | {s['baseline']} | {f1_cell} | "
            f"{_still_improving(s['runs'], s['baseline'])} | {_verdict_counts(s['claims'])} | "
            f"{'<br>'.join(decisive)} |"
        )
        undecided += [
            (group, len(s["seeds"]), c)
            for c in s["claims"]
            if "seeds_needed" in c and c["verdict"].startswith("not distinguishable")
        ]
    if undecided:
        lines += [
            "",
            "## Undecided claims: the seeds a paired t-test needs (80% power)",
            "",
            "For the seed's own claimed effect where its README gives numbers (val BLEU-4 per version), "
            "else for the difference observed here, at the sd of the per-seed differences seen so far.",
            "",
            "| group | claim | seeds run | difference [95% CI] | seeds to decide |",
            "|---|---|---|---|---|",
        ]
        for group, n, c in undecided:
            digits = _digits(c["metric"])
            diffs = "<br>".join(pair_difference(p, digits) for p in c["pairs"] if p["verdict"] != "holds")
            lines.append(f"| {group} | {c['id']} | {n} | {diffs} | {_seeds_to_decide(c)} |")
    return "\n".join(lines) + "\n"


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


def main() -> None:
    """CLI: one report per sweep experiment."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--experiment", help="MLflow experiment of the sweep, e.g. sweep-teacher_forcing-cpu")
    what.add_argument(
        "--rejudge",
        metavar="JSON",
        help="instead: judge a committed report's per-seed runs (sweeps/results/<group>_<scale>.json) "
        "again against sweeps/claims.yaml as it is now, and rewrite its .md/.json/.png (no MLflow needed)",
    )
    what.add_argument(
        "--overview",
        metavar="SCALE",
        help="instead: one table over sweeps/results/<group>_<SCALE>.json against the scale's targets, "
        "written to sweeps/results/overview_<SCALE>.md",
    )
    p.add_argument(
        "--merge",
        metavar="JSON",
        help="with --experiment: add the experiment's runs to a committed report's per-seed runs (e.g. "
        "seeds 3-4 run with sweep.first_seed=3 sweep.seeds=5); stops if a run in both changed its numbers",
    )
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument(
        "--out", default=None, help="output path without suffix (default sweeps/results/<group>_<scale>)"
    )
    args = p.parse_args()
    if args.merge and not args.experiment:
        p.error("--merge goes with --experiment")
    if args.rejudge:
        group, scale, runs = read_report(args.rejudge, "--rejudge")
        s = summarize(group, scale, runs)
        print(markdown(s) + f"wrote {', '.join(map(str, write(s, Path(args.rejudge).with_suffix(''))))}")
        return
    if args.overview:
        text = overview(args.overview)
        out = Path(f"sweeps/results/overview_{args.overview}.md")
        out.write_text(text)
        print(text + f"wrote {out}")
        return
    parts = args.experiment.split("-", 2)
    if len(parts) != 3 or parts[0] != "sweep":
        raise SystemExit(
            f"error: --experiment {args.experiment!r} is not sweep-<group>-<scale>; see `make report`"
        )
    _, group, scale = parts
    runs = collect(args.tracking_uri, args.experiment)
    if not runs:
        raise SystemExit(
            f"error: experiment {args.experiment!r} has no finished trial; run or resume the sweep"
        )
    if args.merge:
        merged_group, merged_scale, committed = read_report(args.merge, "--merge")
        if (merged_group, merged_scale) != (group, scale):
            raise SystemExit(
                f"error: --merge {args.merge!r} is the report of {merged_group} at {merged_scale}, not of "
                f"{group} at {scale}; pass sweeps/results/{group}_{scale}.json"
            )
        runs = merge(committed, runs, args.merge)
    s = summarize(group, scale, runs)
    files = write(s, Path(args.out or f"sweeps/results/{group}_{scale}"))
    parent = log_to_parent(args.tracking_uri, s, files)
    print(markdown(s))
    print(
        f"wrote {', '.join(map(str, files))}" + (f"; logged to MLflow parent run {parent}" if parent else "")
    )
    if parent:
        print(f"versions side by side in the MLflow UI (make ui): {compare_url(args.tracking_uri, parent)}")


if __name__ == "__main__":
    main()
