"""Render a summarized sweep report: its Markdown tables, its per-version figure, and the overview of a scale."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from report_collect import ALSO, CLAIMS, as_float

from captioner.ablation import TIME_METRIC, Interval

# Shown per version, in this order (JSON holds every collected metric).
SHOWN = {
    "val.bleu4": "val BLEU-4",
    "val.cider_d": "val CIDEr-D",
    "test.object_f1": "test object F1",
    TIME_METRIC: "train time (s)",
}


def fmt(x: float, digits: int = 2) -> str:
    """``x`` to ``digits`` decimals, "–" for None or NaN: the one number format of every report page."""
    if x is None or not math.isfinite(x):
        return "–"
    if x != 0 and abs(x) < 10 ** (-digits):
        return f"{x:.1e}"  # 7.25e-08 must not read as 0.00
    return f"{x:.{digits}f}"


def digits_of(metric: str) -> int:
    """Decimals shown for ``metric``: 3 for object F1, 1 for train time, 2 otherwise."""
    return 3 if "object_f1" in metric else 1 if metric == TIME_METRIC else 2


def ci_cell(i: Interval, digits: int) -> str:
    """'30.12 [29.50, 30.74]': an interval's mean and 95% CI, or its one seed's value."""
    if i.n == 0:
        return "–"
    if i.n < 2:
        return f"{fmt(i.mean, digits)} (1 seed)"
    return f"{fmt(i.mean, digits)} [{fmt(i.low, digits)}, {fmt(i.high, digits)}]"


def markdown(s: dict[str, Any]) -> str:
    """The report as Markdown."""
    group, scale, w = s["group"], s["scale"], s["wall_time"]
    seeds = s["seeds"]
    lines = [
        (
            f"# Search check `{group.removeprefix('search_')}` at scale `{scale}`: the best trial against its base"
            if group.startswith("search_")
            else f"# Seed ablation `{group}` at scale `{scale}`"
        ),
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
        cells = [fmt(r["metrics"].get(m, math.nan), digits_of(m)) for m in SHOWN]
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
        stats = {m: Interval(**interval_args(d)) for m, d in row["metrics"].items()}
        n = max((i.n for i in stats.values()), default=0)
        cells = [ci_cell(stats[m], digits_of(m)) if m in stats else "–" for m in SHOWN]
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
        digits = digits_of(c["metric"])
        diffs = "<br>".join(pair_difference(p, digits) for p in c["pairs"])
        mdes = "<br>".join(fmt(p["mde"], digits) for p in c["pairs"])
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
    return f"{p['subject']} - {p['other']}: {ci_cell(Interval(**interval_args(p['diff'])), digits)}"


def _sitting_lines(s: dict[str, Any]) -> list[str]:
    """One line per sitting: its seeds, the command that runs them again, its study, commit and wall time."""
    group, scale, lines = s["group"], s["scale"], []
    report = f"python sweeps/report.py --experiment sweep-{group}-{scale}"
    for p in s.get("sittings") or [
        {**s["wall_time"], "study": s.get("study"), "seeds": s["seeds"], "commits": s.get("commits", [])}
    ]:
        seeds, command = p["seeds"], f"python train.py -m sweep={group} scale={scale}"
        if group.startswith("search_"):  # two arms side by side (Makefile), seeds 0..SEEDS-1
            command = (
                f"make search-check SEARCH={group.removeprefix('search_')} SCALE={scale} SEEDS={len(seeds)}"
            )
            lines.append(
                f"Seeds {', '.join(map(str, seeds))}: `{command}` (its two arms side by side, each with "
                f"`trainer.threads=1`, then the report). Commit {', '.join(c[:7] for c in p['commits'])}; "
                f"{p['first_start_to_last_end_s'] / 60:.1f} min from the first start to the last end "
                f"({p['runs_s'] / 60:.1f} min of runs)."
            )
            continue
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


def interval_args(d: dict[str, float]) -> dict[str, float]:
    """``Interval`` arguments from an interval as a report JSON holds it."""
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
            seed = [as_float(s["versions"][v]["seed_bleu4"]) for v in versions]
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


VERDICT_KINDS = ("holds", "contradicted", "not distinguishable", "not tested", "no verdict")


def verdict_counts(claims: list[dict[str, Any]]) -> str:
    """'2 holds, 1 not distinguishable': a report's claims counted by kind of verdict."""
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


def decisive_share(claims: list[dict[str, Any]]) -> str:
    """'3 of 4': claims that hold or are contradicted, of those tested."""
    tested = [c for c in claims if not c["verdict"].startswith(("not tested", "not run"))]
    decided = [c for c in tested if c["verdict"] in ("holds", "contradicted")]
    return f"{len(decided)} of {len(tested)}"


def _wall_cell(s: dict[str, Any], wall_target: float | None) -> str:
    """The first sitting's wall time against the target, then what each later sitting added."""
    parts = s.get("sittings") or [{**s["wall_time"], "seeds": s["seeds"]}]
    first = parts[0]["first_start_to_last_end_s"] / 60
    cell = fmt(first, 1) + (f" (over {wall_target:g})" if wall_target and first > wall_target else "")
    for p in parts[1:]:
        cell += f" + {fmt(p['first_start_to_last_end_s'] / 60, 1)} (seeds {p['seeds'][0]}-{p['seeds'][-1]})"
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
        if group.startswith("search_"):
            continue  # a search's check, not a seed ablation (docs/results.md has it)
        path = results / f"{group}_{scale}.json"
        if not path.exists():
            lines.append(f"| {group} | no report | | | {spec['baseline']} | | | | |")
            continue
        s = json.loads(path.read_text())
        f1 = s["versions"].get(s["baseline"], {}).get("metrics", {}).get("test.object_f1")
        f1_cell = ci_cell(Interval(**interval_args(f1)), 3) if f1 else "–"
        if f1 and f1_target and f1["mean"] < f1_target:
            f1_cell += f" (under {f1_target:g})"
        commits = ", ".join(c[:7] for c in s.get("commits", [])) or "not recorded"
        commits += " + changes" if s.get("dirty") else ""
        decisive = [
            f"{len(a['seeds'])} seeds: {decisive_share(a['claims'])}"
            for n in range(2, len(s["seeds"]))
            if (archived := results / ARCHIVE.format(n=n) / path.name).exists()
            for a in [json.loads(archived.read_text())]
        ]
        decisive.append(f"{len(s['seeds'])} seeds: {decisive_share(s['claims'])}")
        lines.append(
            f"| {group} | {s['wall_time']['n_runs']} ({len(s['versions'])} x {len(s['seeds'])} seeds) | "
            f"{commits} | {_wall_cell(s, wall_target)} | {s['baseline']} | {f1_cell} | "
            f"{_still_improving(s['runs'], s['baseline'])} | {verdict_counts(s['claims'])} | "
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
            digits = digits_of(c["metric"])
            diffs = "<br>".join(pair_difference(p, digits) for p in c["pairs"] if p["verdict"] != "holds")
            lines.append(f"| {group} | {c['id']} | {n} | {diffs} | {_seeds_to_decide(c)} |")
    return "\n".join(lines) + "\n"
