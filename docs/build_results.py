"""Write docs/results.md and docs/results_summary.md from the JSON that benchmarks and sweep reports write.

    make results                            # or: python docs/build_results.py
    python docs/build_results.py --check    # exit 1, naming the fix, when either page is out of date

Every number on both pages is read from bench/results/*.json (bench/common.py writes them) and
sweeps/results/*.json (sweeps/report.py writes them), so prose and data cannot disagree. The prose kept
here says what each table measures and how to reproduce it, and carries no number; commits, machines
and load averages stay in the JSON each section links. A benchmark whose JSON is absent gets a line
naming the command that writes it. The sweep tables and their formatting (mean [95% CI], verdicts, MDE,
seeds to decide) are sweeps/report_render.py's own, imported from it so the page prints what the
per-group reports print. Any number of seeds works (each report names its seeds), with or without archived
reports (sweeps/results/<n>seeds/).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path("docs/results.md")
SUMMARY = Path("docs/results_summary.md")
FIX = "make results"


# sweeps/ holds scripts, not a package: its report modules import each other as `python sweeps/report.py` does.
sys.path.insert(0, str(ROOT / "sweeps"))

import report_collect  # noqa: E402
import report_render  # noqa: E402

from captioner.ablation import Interval, paired  # noqa: E402

fmt = report_render.fmt  # "–" for None/NaN, an exponent for tiny numbers: one number format on every page


# ---------------------------------------------------------------------------------------- plumbing


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _link(rel: str) -> str:
    """A link from docs/ to a repository file."""
    return f"[{rel}](../{rel})"


def _section(title: str, prose: str) -> list[str]:
    """A page section's heading and what it holds."""
    return [f"## {title}", "", prose, ""]


def _reproduce(rel: str, command: str) -> str:
    return (
        f"Reproduce: `{command}`, which writes {_link(rel)} (with the commit, machine, command, date and "
        "load average of the measurement)."
    )


def _missing(rel: str, command: str | None) -> list[str]:
    if command is None:
        return [f"Not measured yet: no benchmark in `bench/` writes `{rel}` so far.", ""]
    return [f"Not measured yet: `{command}` writes `{rel}`.", ""]


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _times(x: float | None) -> str:
    return "–" if x is None else f"{fmt(x, 1)}x"


def _thousands(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{fmt(100 * x, 1)}%"


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


# ----------------------------------------------------------------------------------------- quality

QUALITY_TITLE = "Quality on the shapes benchmark"
# The runs `make bench-quality` trains (mk/bench.mk), in words; a label not here is described from its record.
RUNS = {
    "soft": "soft attention",
    "hard": "hard attention (argmax location at test time)",
    "mean": "mean context (no attention)",
    "blind": "image-blind",
    "scst": "soft attention + SCST, CIDEr-D reward",
    "scst_bleu": "soft attention + SCST, BLEU-4 reward",
    "scst_f1": "soft attention + SCST, CIDEr-D + object F1 reward",
    "searched": "searched recipe (`quality_searched`)",
    "searched_scst": "searched recipe + SCST, CIDEr-D reward",
}
QUALITY_TEST = [
    ("bleu4", "BLEU-4", 1),
    ("cider_d", "CIDEr-D", 1),
    ("meteor", "METEOR", 1),
    ("object_f1", "object F1", 3),
    ("exact_scene", "exact scene", 3),
    ("pointing_accuracy", "pointing", 3),
    ("repetition", "repeat", 2),
    ("length", "words", 1),
]
QUALITY_NOVEL = [("object_f1", "test_novel object F1", 3), ("exact_scene", "test_novel exact scene", 3)]
GROUNDED = {"object_f1": "object F1", "exact_scene": "exact scene", "pointing_accuracy": "pointing"}


def _describe(label: str, record: dict[str, Any] | None) -> str:
    if label in RUNS:
        return RUNS[label]
    if record is None:
        return label  # a sweep's row: its label says what it is
    context, attention = record.get("context", "soft"), record.get("attention", "soft")
    words = f"{attention} attention" if context == "soft" else f"{context} context"
    return words + (" + SCST" if record.get("objective") == "scst" else "")


def _decode(name: str, config: dict[str, Any] | None) -> str:
    if not config:
        return name
    if config["method"] == "beam":
        return f"beam {config['k']}" + (", length-normalised" if config.get("length_norm") else "")
    return config["method"]


def _quality_grid(q: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str, str], dict]]:
    """Runs and decodes in the record's order, and its rows by (run, decode, split)."""
    rows = {(r["run"], r["decode"], r["split"]): r for r in q["rows"]}
    runs = list(dict.fromkeys([*(r["run"] for r in q.get("runs", [])), *(r["run"] for r in q["rows"])]))
    decodes = list(dict.fromkeys([*q.get("decode", {}), *(r["decode"] for r in q["rows"])]))
    return runs, decodes, rows


def _best(q: dict[str, Any], split: str, metric: str) -> tuple[float, str, str] | None:
    """The highest value of ``metric`` on ``split`` over the benchmark's own runs: (value, run, decode)."""
    seen = [
        (r[metric], r["run"], r["decode"])
        for r in q["rows"]
        if r["split"] == split and "source" not in r and isinstance(r.get(metric), float | int)
    ]
    return max(seen, key=lambda x: x[0]) if seen else None


def quality_section(bench: Path) -> list[str]:
    """The shapes quality table, the targets, and the short runs and probe that chose the recipe."""
    lines = _section(
        QUALITY_TITLE,
        "`experiment=quality` trained on the generated shapes set with soft attention and with hard attention "
        "(`decoder.attention=hard`, paper Sec. 4.1), two controls with everything else equal "
        "(`decoder.context=mean`, a mean-pooled context as in Show and Tell; `blind`, no image), and SCST "
        "stages from the soft run, one per reward (`experiment=quality_scst`). Each checkpoint is scored on "
        "`test` and on `test_novel` (colour-shape pairs never seen in training) with each decoding. Text "
        "metrics are 0-100, grounded ones 0-1: object F1 (objects named right), exact scene (every object of "
        "the image right), pointing (a correctly named word's attention peaks on its object); repeat is the "
        "share of captions repeating a word trigram and words the mean caption length, the two columns a "
        "gamed SCST reward would show. Train min is the training steps' wall time (an SCST stage: its own "
        "steps only; validation and feature cache excluded). `searched` is the Optuna search's recipe "
        "(`experiment=quality_searched`: its best trial, best.pt on val object F1; the search and its 5-seed "
        "check are below) and `searched_scst` its SCST stage (`quality_searched_scst`: `quality_scst`'s stage "
        "on that model), trained with `trainer.threads=2` on the 2-core CPU (commands: docs/sweeps.md).",
    )
    q = _load(bench, "quality.json")
    if q is None:
        return lines + _missing("bench/results/quality.json", "make bench-quality") + _recipe_sections(bench)
    lines += [_reproduce("bench/results/quality.json", "make bench-quality"), ""]
    runs, decodes, rows = _quality_grid(q)
    records = {r["run"]: r for r in q.get("runs", [])}
    lines += ["Targets (`bench/quality.py`) against the best row of the benchmark's runs:", ""]
    for t in q.get("targets", []):
        best = _best(q, t["split"], t["metric"])
        name = f"{t['split']} {GROUNDED.get(t['metric'], t['metric'])} >= {t['min']:g}"
        if best is None:
            lines.append(f"- {name}: no row measures it")
            continue
        value, run, decode = best
        gap = "met" if value >= t["min"] else f"missed by {fmt(t['min'] - value, 3)}"
        lines.append(
            f"- {name}: best {fmt(value, 3)} (`{run}`, {_decode(decode, q['decode'].get(decode))}), {gap}"
        )
    header = ["run", "what", "decode", *(h for _, h, _ in QUALITY_TEST), *(h for _, h, _ in QUALITY_NOVEL)]
    table, carried = [], False
    for run in runs:
        record = records.get(run)
        mark = ""
        if record and record.get("measured_at"):
            mark, carried = " †", True
        for decode in decodes:
            test, novel = rows.get((run, decode, "test")), rows.get((run, decode, "test_novel"))
            if test is None and novel is None:
                continue
            table.append(
                [
                    f"`{run}`{mark}",
                    _describe(run, record),
                    _decode(decode, q.get("decode", {}).get(decode)),
                    *(fmt((test or {}).get(k), d) for k, _, d in QUALITY_TEST),
                    *(fmt((novel or {}).get(k), d) for k, _, d in QUALITY_NOVEL),
                    fmt((test or novel).get("train_min"), 0),
                ]
            )
    lines += ["", *_table([*header, "train min"], table), ""]
    if carried:
        lines += [
            "† Measured at an earlier commit and carried into this record unchanged (`measured_at` in the JSON).",
            "",
        ]
    return lines + _recipe_sections(bench)


def _recipe_sections(bench: Path) -> list[str]:
    """How the recipe was chosen: short ablation runs, the encoder-layer probe, the recipe search."""
    lines = ["### How the recipe was chosen", ""]
    a = _load(bench, "quality_ablation.json")
    lines += [
        "Short runs, each adding one change to the paper's decoder on a mid-level encoder map, scored on "
        "`test` with beam 3 (`experiment=quality` keeps every change that helped). Each row's command "
        "trains it again; the JSON holds where and when they ran.",
        "",
    ]
    if a is None:
        lines += ["`bench/results/quality_ablation.json` is absent: it records hand-run short runs.", ""]
    else:
        lines += [f"Source: {_link('bench/results/quality_ablation.json')}.", ""]
        metrics = [*QUALITY_TEST[:2], *QUALITY_TEST[3:6], ("attention_mass", "attention mass", 3)]
        lines += _table(
            ["what", "command", "epochs", "best epoch", *(h for _, h, _ in metrics), "test_novel object F1"],
            [
                [
                    r["what"],
                    f"`{r['command']}`",
                    str(r["epochs"]),
                    str(r["best_epoch"]),
                    *(fmt(r["test"].get(k), d) for k, _, d in metrics),
                    fmt(r.get("test_novel", {}).get("object_f1"), 3),
                ]
                for r in a["rows"]
            ],
        )
        by_epoch = a.get("val_object_f1_by_epoch", {})
        if by_epoch:
            lines += ["", "Validation object F1 by epoch:", ""]
            lines += _table(
                ["run", "epochs", "val object F1, epoch 1, 2, ..."],
                [[name, str(len(v)), " / ".join(fmt(x, 3) for x in v)] for name, v in by_epoch.items()],
            )
        lines.append("")
    lines += [
        "**Encoder layer probe.** Which layer of the frozen ImageNet encoder still knows each object's shape "
        "and colour: the feature at each object's centre, a logistic regression fitted on train objects and "
        "scored on val objects.",
        "",
    ]
    p = _load(bench, "probe_layers.json")
    if p is None:
        lines += _missing("bench/results/probe_layers.json", "make bench-probe")
    else:
        lines += [_reproduce("bench/results/probe_layers.json", "make bench-probe"), ""]
        lines += _table(
            ["layer", "channels", "shape accuracy", "colour accuracy"],
            [
                [r["layer"], str(r["channels"]), _pct(r["shape_acc"]), _pct(r["colour_acc"])]
                for r in p["rows"]
            ],
        )
        lines.append("")
    r = _load(bench, "recipes.json")
    if r is not None:
        lines += [
            "**Recipe search** for the demo (`experiment=demo`) and the sweeps' `scale=cpu`: candidate runs, "
            "scored on the test splits; CPU seconds (user + sys, one thread) where recorded. Source: "
            f"{_link('bench/results/recipes.json')} (each run's overrides; its note says which run each "
            "committed config equals).",
            "",
        ]
        lines += _table(
            ["run", "for", "what", "best epoch", "test object F1", "test_novel object F1", "CPU s"],
            [
                [
                    x["name"],
                    x["deliverable"],
                    x["note"],
                    str(x.get("best_epoch", "–")),
                    fmt(x.get("test", {}).get("object_f1"), 3),
                    fmt(x.get("test_novel", {}).get("object_f1"), 3),
                    fmt(x["cpu_user_s"] + x["cpu_sys_s"], 0) if "cpu_user_s" in x else "–",
                ]
                for x in r.get("runs", [])
            ],
        )
        steps = r.get("step_benchmark", {}).get("rows", [])
        if steps:
            lines += ["", "CPU seconds per training step of the sweep model, images encoded every step:", ""]
            lines += _table(
                ["version", "image px", "fine-tuned encoder", "CPU s per step", "captions per CPU s"],
                [
                    [
                        s["version"],
                        str(s["image_size"]),
                        "yes" if s["finetune"] else "no",
                        fmt(s["cpu_s_per_step"], 3),
                        fmt(s["items_per_cpu_s"], 1),
                    ]
                    for s in steps
                ],
            )
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------ search

SEARCH_METRICS = [("val.object_f1", "val object F1"), ("test.exact_scene", "test exact scene")]
SEARCH_METRICS += [("test.object_f1", "test object F1")]


def search_section(sweeps: Path) -> list[str]:
    """Each Optuna search (sweeps/results/search-<name>-<scale>.json): its best trial with the parameter
    importances, and its check over seeds against the base recipe (search_<name>_<scale>.json)."""
    lines = [
        "### Optuna searches of the recipe",
        "",
        "A seeded TPE search with a median pruner (`sweeps/search/`, docs/sweeps.md). The best trial is the best "
        "of many at one seed, so `make search-check` reruns it and the recipe it started from at 5 seeds each "
        "and compares them seed by seed (95% t-interval of the paired difference).",
        "",
    ]
    reports = sorted(sweeps.glob("search-*-*.json"))
    if not reports:
        return lines + [
            "No search report yet: `python train.py -m search=quality scale=cpu`, then "
            "`python sweeps/search_report.py --experiment search-quality-cpu`.",
            "",
        ]
    for path in reports:
        s = json.loads(path.read_text())
        _, search, scale = path.stem.split("-", 2)
        counts = ", ".join(f"{n} {state.lower()}" for state, n in s["counts"].items())
        rel = f"sweeps/results/{path.stem}"
        lines += [
            f"**`search={search}` at `scale={scale}`**: Optuna study `{s['study']}`, {counts}. Report "
            f"{_link(rel + '.md')}; optimisation history {_link(rel + '_history.png')}; parallel coordinates "
            f"{_link(rel + '_parallel.png')}.",
            "",
        ]
        best = s.get("best")
        if best:
            lines += [
                f"Best trial {best['number']}: objective ({s['direction']}d) {fmt(best['value'], 3)}.",
                "",
            ]
            lines += _table(
                ["parameter", "best value", "importance (fANOVA)"],
                [
                    [
                        f"`{k}`",
                        f"{v:.3g}" if isinstance(v, float) else str(v),
                        fmt(s["importances"].get(k), 3),
                    ]
                    for k, v in best["params"].items()
                ],
            )
            lines.append("")
        check = _load(sweeps, f"search_{search}_{scale}.json")
        if check is None:
            lines += [f"Not checked over seeds yet: `make search-check SEARCH={search} SCALE={scale}`.", ""]
            continue
        lines += [
            f"Checked at seeds {', '.join(map(str, check['seeds']))} (`make search-check SEARCH={search} "
            f"SCALE={scale}`; {_link(f'sweeps/results/search_{search}_{scale}.md')}). Mean [95% CI] over seeds:",
            "",
        ]
        lines += _table(
            ["arm", *(h for _, h in SEARCH_METRICS)],
            [
                [
                    arm,
                    *(
                        report_render.ci_cell(Interval(**report_render.interval_args(v["metrics"][m])), 3)
                        if m in v["metrics"]
                        else "–"
                        for m, _ in SEARCH_METRICS
                    ),
                ]
                for arm, v in check["versions"].items()
            ],
        )
        lines += ["", *report_render.claims_table(check), ""]
        # Seed 0 is the search's own trial, kept because it scored best there: the other seeds are unbiased.
        values = report_collect.values_of([r for r in check["runs"] if r["seed"] != 0])
        fresh = []
        for metric, name in SEARCH_METRICS[:2]:
            if {"best", "base"} <= set(values) and values["best"][metric]:
                seeds, diff = paired(values["best"][metric], values["base"][metric])
                fresh.append(f"{name} {report_render.ci_cell(diff, 3)} (seeds {', '.join(map(str, seeds))})")
        if fresh:
            lines += [
                "Without seed 0 (the search's own trial, chosen because it scored best): best - base "
                + "; ".join(fresh)
                + ".",
                "",
            ]
    return lines


# --------------------------------------------------------------------------------------- ablations

ABLATION_TITLE = "The seed's ablations, replicated over seeds"


def _claims_config() -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(report_collect.CLAIMS))


# Smoke-scale reports check the machinery, not the claims; git ignores them, so a checkout may or may not have them.
NOT_RESULTS = ("smoke",)


def _reports(sweeps: Path, groups: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{scale: {group: report}} for every sweeps/results/<group>_<scale>.json, groups in claims.yaml order."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for group in groups:
        for path in sorted(sweeps.glob(f"{group}_*.json")):
            scale = path.stem.removeprefix(f"{group}_")
            # "_" in it: another group's file whose name starts with this one's
            if "_" not in scale and scale not in NOT_RESULTS:
                found.setdefault(scale, {})[group] = json.loads(path.read_text())
    return dict(sorted(found.items()))


def _archives(sweeps: Path) -> list[tuple[int, Path]]:
    """Archived reports, sweeps/results/<n>seeds/, by n."""
    pattern = re.compile(report_render.ARCHIVE.format(n=r"(\d+)") + "$")
    return sorted(
        (int(m.group(1)), p) for p in sweeps.iterdir() if p.is_dir() and (m := pattern.match(p.name))
    )


def _kind(verdict: str) -> str:
    """holds / contradicted / not distinguishable / not tested / no verdict / not run: the verdict, seeds aside."""
    return next((k for k in (*report_render.VERDICT_KINDS, "not run") if verdict.startswith(k)), verdict)


def _baseline_f1(s: dict[str, Any], target: float | None) -> str:
    f1 = s["versions"].get(s["baseline"], {}).get("metrics", {}).get("test.object_f1")
    if not f1:
        return "–"
    cell = report_render.ci_cell(Interval(**report_render.interval_args(f1)), 3)
    if target is not None:
        cell += f" (target >= {target:g}: {'met' if f1['mean'] >= target else 'missed'})"
    return cell


def _seeds(s: dict[str, Any]) -> str:
    return f"{len(s['seeds'])} ({', '.join(map(str, s['seeds']))})"


def _ablation_groups(config: dict[str, Any]) -> list[str]:
    """The seed-ablation groups of claims.yaml; search checks (search_<name>) have their own section."""
    return [g for g in config["groups"] if not g.startswith("search_")]


def ablation_section(sweeps: Path) -> list[str]:
    """Per group and scale: per-version intervals and every claim's verdict; then verdicts by number of seeds."""
    config = _claims_config()
    by_scale = _reports(sweeps, _ablation_groups(config))
    lines = _section(
        ABLATION_TITLE,
        "Every version of a seed-ablation group runs at several seeds (`trainer.seed`); a run scores its best "
        "validation (val BLEU-4, the seed's own number, and that validation's CIDEr-D and object F1), the "
        "test set with that checkpoint, and its training wall time. Each of the seed's claims "
        "(`sweeps/claims.yaml`) is a paired comparison over seeds: the per-seed differences between two "
        "versions, their mean and 95% t-interval, the minimal detectable effect (MDE) at 80% power, and, for "
        "an undecided claim, the seeds a paired t-test would need to decide it (for the seed's own claimed "
        "effect where its README gives one, else for the difference seen here). Directional BLEU-4 claims "
        "are also checked on val CIDEr-D and test object F1, because BLEU-4 rewards fluent caption templates "
        "on shapes. No quality verdict is given while a group's baseline has not learned.",
    )
    lines += [report_render.VERDICTS, ""]
    if not by_scale:
        return lines + [
            "No sweep report yet: `make sweep GROUP=<group> SCALE=cpu` writes `sweeps/results/<group>_cpu.json`.",
            "",
        ]
    for scale, reports in by_scale.items():
        targets = config.get("targets", {}).get(scale, {})
        f1_target = targets.get("baseline_test_object_f1")
        overview = f"sweeps/results/overview_{scale}.md"
        lines += [
            f"### Every group at scale `{scale}`",
            "",
            f"Reproduce a group: `make sweep GROUP=<group> SCALE={scale}` (the sweep, then "
            f"`python sweeps/report.py --experiment sweep-<group>-{scale}`, which writes "
            f"`sweeps/results/<group>_{scale}.{{md,json,png}}`); seeds added to a committed report: `python "
            f"train.py -m sweep=<group> scale={scale} sweep.first_seed=<first> sweep.seeds=<end>`, then the "
            f"report with `--merge sweeps/results/<group>_{scale}.json`. The groups against the scale's "
            f"targets, wall time included: {_link(overview)}, written by `python sweeps/report.py --overview "
            f"{scale}`.",
            "",
        ]
        lines += _table(
            ["group", "seeds", "baseline", "baseline test object F1 [95% CI]", "verdicts", "decisive"],
            [
                [
                    f"[{group}]({_anchor(f'{group} at {scale}')})",
                    _seeds(s),
                    s["baseline"],
                    _baseline_f1(s, f1_target),
                    report_render.verdict_counts(s["claims"]),
                    report_render.decisive_share(s["claims"]),
                ]
                for group, s in reports.items()
            ],
        )
        lines += ["", "Decisive: claims that hold or are contradicted, of the claims tested.", ""]
        for group, s in reports.items():
            lines += _group(group, scale, s, f1_target)
        lines += _by_seeds(sweeps, scale, reports)
    return lines


def _group(group: str, scale: str, s: dict[str, Any], f1_target: float | None) -> list[str]:
    rel = f"sweeps/results/{group}_{scale}"
    comp = s["competence"]
    lines = [
        f"#### {group} at {scale}",
        "",
        f"{s['wall_time']['n_runs']} runs: {len(s['versions'])} versions x {len(s['seeds'])} seeds "
        f"({', '.join(map(str, s['seeds']))}). Baseline {s['baseline']}, test object F1 "
        f"{_baseline_f1(s, f1_target)}. Per-seed numbers, the commands and the sittings: "
        f"{_link(rel + '.md')}; figure: {_link(rel + '.png')}; data: {_link(rel + '.json')}.",
        "",
    ]
    if comp["failures"]:
        lines += [
            "**No verdict: baseline below competence**: "
            + "; ".join(comp["failures"])
            + ". Quality claims get "
            "no verdict; wall-time claims still do.",
            "",
        ]
    return lines + [*report_render.versions_table(s), "", *report_render.claims_table(s), ""]


def _pairs(c: dict[str, Any] | None) -> str:
    if c is None:
        return "–"
    digits = report_render.digits_of(c["metric"])
    return "<br>".join(report_render.pair_difference(p, digits) for p in c["pairs"]) or "–"


def _by_seeds(sweeps: Path, scale: str, reports: dict[str, dict[str, Any]]) -> list[str]:
    """Each archived report (fewer seeds) against the current one, claim by claim."""
    lines = []
    archives = _archives(sweeps)
    if not archives:
        return [
            f"No archived report at scale `{scale}`: `sweeps/results/{report_render.ARCHIVE.format(n='<n>')}/` keeps a "
            "group's report from before seeds were added to it, and this page then compares the verdicts.",
            "",
        ]
    for n, folder in archives:
        pairs = [
            (group, old, reports[group])
            for group in reports
            if (old := _load(folder, f"{group}_{scale}.json")) is not None
        ]
        if not pairs:
            continue
        rel = f"sweeps/results/{folder.name}"
        lines += [f"### Verdicts at {n} seeds and now (`{scale}`)", ""]
        same = [group for group, old, new in pairs if len(new["seeds"]) == len(old["seeds"])]
        rows, changed, tested = [], [], 0
        for group, old, new in pairs:
            if group in same:
                continue
            before = {c["id"]: c for c in old["claims"]}
            after = {c["id"]: c for c in new["claims"]}
            for cid in [*after, *(c for c in before if c not in after)]:
                a, b = before.get(cid), after.get(cid)
                ka, kb = (_kind(c["verdict"]) if c else "not in the report" for c in (a, b))
                if ka == kb == "not tested":
                    continue
                tested += 1
                if ka != kb:
                    changed.append(f"{group} {cid}")
                rows.append(
                    [
                        group,
                        cid,
                        _pairs(a),
                        a["verdict"] if a else "–",
                        _seeds(new),
                        _pairs(b),
                        b["verdict"] if b else "–",
                        f"**changed**: {ka} -> {kb}" if ka != kb else "no",
                    ]
                )
        text = f"The {n}-seed reports ({_link(rel)}) beside the current ones."
        if rows:
            text += (
                f" **{len(changed)} of {tested} claims tested changed verdict**: {', '.join(changed)}."
                if changed
                else f" No verdict changed ({tested} claims tested)."
            )
        if same:
            text += f" Still at {n} seeds, so nothing to compare yet: {', '.join(same)}."
        lines += [text, ""]
        if rows:
            header = [
                "group",
                "claim",
                f"difference at {n} seeds [95% CI]",
                f"verdict at {n} seeds",
                "seeds now",
                "difference now [95% CI]",
                "verdict now",
                "changed",
            ]
            lines += [*_table(header, rows), ""]
    return lines


# ------------------------------------------------------------------------------------- performance

SPEED_TITLE = "Speed and cost"


def _train_speed(d: dict[str, Any]) -> list[str]:
    lines = _table(
        ["model", "implementation", "step s", "captions/s", "GFLOP/step", "GFLOP/s", "util", "x captioner"],
        [
            [
                r["model"],
                r["impl"],
                fmt(r["step_s"], 3),
                fmt(r["captions_per_s"], 1),
                fmt(r["gflop_per_step"], 1),
                fmt(r["gflop_per_s"], 1),
                fmt(r["util"], 2),
                fmt(r["vs_captioner"], 2),
            ]
            for r in d["rows"]
        ],
    )
    sgemm = d.get("sgemm_gflop_per_s", {})
    if sgemm:
        lines += ["", "sgemm GFLOP/s in the same process (util's denominator is the first):", ""]
        lines += _table(["GEMM", "GFLOP/s"], [[k, fmt(v, 1)] for k, v in sgemm.items()])
    return lines


def _beam(d: dict[str, Any]) -> list[str]:
    lines = []
    for device, record in d.items():
        if not isinstance(record, dict) or "results" not in record:
            continue
        models: dict[str, dict[str, dict]] = {}
        for r in record["results"]:
            models.setdefault(r["model"], {})[r["method"]] = r
        rows = []
        for model, m in models.items():
            tutorial, single, batched = m.get("tutorial per-image"), m.get("per-image"), m.get("batched", {})
            rows.append(
                [
                    model,
                    fmt(tutorial["seconds"], 3) if tutorial else "–",
                    fmt(single["seconds"], 3) if single else "–",
                    fmt(batched.get("seconds"), 3),
                    _times(batched.get("speedup_vs_tutorial")),
                    _times(batched.get("speedup")),
                    f"{tutorial['same_as_batched']} of {tutorial['images']}"
                    if tutorial and tutorial.get("same_as_batched") is not None
                    else "–",
                ]
            )
        k, images = record["results"][0]["k"], record["results"][0]["images"]
        lines += [
            f"`{device}` (k={k}, {images} images, threads {record['machine'].get('threads', '–')}):",
            "",
            *_table(
                [
                    "model",
                    "tutorial per-image s",
                    "ours per-image s",
                    "ours batched s",
                    "batched vs tutorial",
                    "batched vs ours per image",
                    "tutorial's best caption = ours",
                ],
                rows,
            ),
            "",
        ]
    return lines[:-1]


def _loader(d: dict[str, Any]) -> list[str]:
    return _table(
        ["mode", "workers", "captions/s"],
        [[r["mode"], str(r["workers"]), _thousands(r["captions_per_s"])] for r in d["rows"]],
    )


def _feature_cache(d: dict[str, Any]) -> list[str]:
    lines = _table(
        ["mode", "epoch s", "captions/s"],
        [[r["mode"], fmt(r["epoch_s"], 1), fmt(r["captions_per_s"], 1)] for r in d["rows"]],
    )
    return lines + [
        "",
        f"Speed-up {_times(d.get('speedup'))}; building the cache took {fmt(d.get('cache_build_s'), 1)} s "
        f"({fmt(d.get('cache_mib'), 1)} MiB), repaid after {fmt(d.get('break_even_epochs'), 2)} epochs.",
    ]


def _scale(d: dict[str, Any]) -> list[str]:
    lines = []
    for label, record in d.items():
        if not isinstance(record, dict) or "rows" not in record:
            continue
        by_n: dict[tuple[str, int], dict[str, dict]] = {}
        for r in record["rows"]:
            by_n.setdefault((r["kind"], r["n"]), {})[r["stage"]] = r
        rows = []
        for (kind, n), st in by_n.items():
            loader = st.get("loader", {})
            rows.append(
                [
                    kind,
                    _thousands(n),
                    fmt(st.get("prepare", {}).get("time_s"), 1),
                    fmt(st.get("first_batch", {}).get("time_s"), 2),
                    " / ".join(_thousands(loader.get(f"img_s_w{w}")) for w in range(3)) if loader else "–",
                    fmt(st.get("cache", {}).get("time_s"), 1),
                    fmt(st.get("cache", {}).get("cache_gib"), 3),
                    _thousands(max(s["peak_rss_mb"] for s in st.values())),
                ]
            )
        growth = {k: v for k, v in record.get("growth_exponent", {}).items() if v is not None}
        lines += [
            f"Record `{label}`:",
            "",
            *_table(
                [
                    "store",
                    "images",
                    "prepare s",
                    "first batch s",
                    "loader img/s (0 / 1 / 2 workers)",
                    "cache s",
                    "cache GiB",
                    "peak tree RSS MB",
                ],
                rows,
            ),
            "",
        ]
        if growth:
            lines += [
                "Growth exponent (time ~ N^k): "
                + ", ".join(f"{k} {fmt(v, 2)}" for k, v in growth.items())
                + ".",
                "",
            ]
    return lines[:-1]


def _sweep_overhead(d: dict[str, Any]) -> list[str]:
    lines = _table(
        ["part", "s per trial", "note"], [[r["part"], fmt(r["s"], 3), r.get("note", "")] for r in d["rows"]]
    )
    total, target = d.get("per_trial_total_s"), d.get("target_s")
    return lines + [
        "",
        f"Per trial: {fmt(total, 2)} s"
        + (f" (target <= {target:g} s: {'met' if total <= target else 'missed'})." if target else "."),
    ]


def _cpu_scale_cost(d: dict[str, Any]) -> list[str]:
    same = {True: "yes", False: "no", None: "other data"}
    lines = _table(
        [
            "lever",
            "locations",
            "batch",
            "precision",
            "LSTM step",
            "captions/s",
            "cost per caption vs base",
            "same numbers as base",
        ],
        [
            [
                r["lever"],
                str(r["locations"]),
                str(r["batch"]),
                r["precision"] + (" + compiled attention" if r.get("compiled_attention") else ""),
                f"`{r['lstm_step']}`",
                fmt(r["captions_per_s"], 1),
                fmt(r["cost_vs_base"], 2),
                same.get(r.get("weights_equal_base"), str(r.get("weights_equal_base"))),
            ]
            for r in d["rows"]
        ],
    )
    metrics = d.get("metrics", [])
    if metrics:
        lines += [
            "",
            "Scoring the final evaluation's captions: "
            + "; ".join(
                f"{m['metrics']}, {m['captions']} captions: {fmt(m['seconds'], 2)} s" for m in metrics
            )
            + ".",
        ]
    return lines


def _threads(d: dict[str, Any]) -> list[str]:
    targets = d.get("setup", {}).get("targets", {})
    lines = _table(
        [
            "setting",
            "threads alone",
            "alone captions/s",
            "beside a busy core",
            "alone / best alone",
            "beside / alone",
            "meets the targets",
        ],
        [
            [
                f"`{r['setting']}`",
                ", ".join(map(str, r["threads_alone"])),
                fmt(r["alone"], 1),
                fmt(r["beside_busy"], 1),
                fmt(r["alone_vs_best"], 3),
                fmt(r["busy_vs_alone"], 3),
                "yes" if r["meets_targets"] else "no",
            ]
            for r in d["rows"]
        ],
    )
    if targets:
        lines += ["", "Targets: " + ", ".join(f"{k} >= {v:g}" for k, v in targets.items()) + "."]
    ceiling = d.get("busy_vs_alone_ceiling")
    if ceiling is not None:
        lines += [
            "",
            f"Ceiling on this machine: a default within {targets.get('alone_vs_best', 0.95):g} of the best "
            f"alone keeps at most {ceiling:.3f} of its speed beside a busy core (the idle cores' speed, or "
            "the fair scheduler's N/(N+1) share of every core; `bench/threads.py` explains).",
        ]
    return lines


def _cell(x: Any) -> str:
    return fmt(x, 3) if isinstance(x, float) else "–" if x is None else str(x)


def _generic(d: dict[str, Any]) -> list[str]:
    """Any benchmark record with ``rows`` (or records of them under keys): every column it has."""
    records = {"": d} if "rows" in d else {k: v for k, v in d.items() if isinstance(v, dict) and "rows" in v}
    lines = []
    for key, record in records.items():
        columns = list(dict.fromkeys(k for r in record["rows"] for k in r))
        lines += [f"`{key}`:", ""] if key else []
        lines += [*_table(columns, [[_cell(r.get(c)) for c in columns] for r in record["rows"]]), ""]
    return lines[:-1] if lines else ["The record has no `rows`; see the JSON."]


def _figure(x: float | None) -> str:
    """A rate with thousands separators, a ratio or fraction with two decimals."""
    return _thousands(x) if x is not None and abs(x) >= 100 else fmt(x, 2)


def _gpu(d: dict[str, Any]) -> list[str]:
    """bench/gpu.py's record: issue 29's targets against the run, then every measurement; a record of
    another layout: every column it has."""
    if "targets" not in d or not all("id" in r for r in d.get("rows", [])):
        return _generic(d)
    setup = d.get("setup", {})
    quick = " `--quick`: toy sizes, a plumbing check, not a measurement." if setup.get("quick") else ""
    lines = [f"Device: {setup.get('device')}, torch {setup.get('torch')}.{quick}", ""]
    lines += _table(
        ["figure", "before", "target", "this run", "verdict"],
        [
            [
                t["figure"],
                t["today"],
                t["target"].replace(">=", "≥").replace("<=", "≤"),
                _cell(t["value"]),
                t["verdict"],
            ]
            for t in d["targets"]
        ],
    )
    rows = []
    for r in d["rows"]:
        note = r.get("error") or r.get("gpu_busy_error") or r.get("ops_per_batch_error") or ""
        rows.append(
            [
                f"`{r['id']}`",
                r["status"],
                _thousands(r.get("captions_per_s")),
                _thousands(r.get("images_per_s")),
                fmt(r.get("step_ms"), 1),
                fmt(r.get("warmup_s"), 1),
                fmt(r.get("peak_memory_gib"), 1),
                fmt(r.get("gpu_busy"), 2),
                _thousands(r.get("ops_per_batch")),
                note,
            ]
        )
    header = ["measurement", "status", "captions/s", "images/s", "step ms", "warm-up s", "peak GiB"]
    return [*lines, "", *_table([*header, "GPU busy", "ops/batch", "note"], rows)]


# (file, title, what it measures, command that writes it, renderer)
BENCHMARKS = [
    (
        "train_speed",
        "Decoder training speed",
        "One decoder train step (forward with teacher forcing, loss, backward, AdamW) on random captions: FLOP/s "
        "against sgemm in the same process (util), and captions/s against a tutorial-style reference decoder "
        "(`bench/reference_decoder.py`: length-sorted shrinking batch, `nn.LSTMCell`, annotations re-projected "
        "every step; `tutorial_proj1` with that projection done once). `lstm_cell` and `hoisted` are local "
        "experiments on our decoder, not in `src/`.",
        "make bench-train-speed",
        _train_speed,
    ),
    (
        "beam",
        "Beam search",
        "Batched beam search (images and beams in one loop) against the same function called one image at a "
        "time, and against the tutorial's per-image beam search on the same weights; random weights run every "
        "caption to the maximum length, so each method does the same steps.",
        "make bench-beam",
        _beam,
    ),
    (
        "feature_cache",
        "Feature cache",
        "An epoch on cached frozen-encoder features against encoding every image every step, same model and "
        "data, no augmentation in either mode.",
        "make bench-feature-cache",
        _feature_cache,
    ),
    (
        "loader",
        "Data loader",
        "Train-loader throughput alone: images with augmentation against cached features.",
        "make bench-loader",
        _loader,
    ),
    (
        "cpu_scale_cost",
        "What a scale=cpu sweep run costs",
        "One train step of the sweeps' `scale=cpu` model against each lever on its cost, one thread as each "
        "sweep worker runs; 'same numbers' asks whether the weights after the same steps are bitwise those "
        "of the base (a lever that changes them would change every committed per-seed number).",
        "make bench-cpu-scale-cost",
        _cpu_scale_cost,
    ),
    (
        "sweep_overhead",
        "Sweep overhead per trial",
        "What a sweep costs per trial besides training: the Optuna sweeper on a no-op task, the MLflow run, "
        "Hydra's compose.",
        "make bench-sweep-overhead",
        _sweep_overhead,
    ),
    (
        "scale",
        "Data path at COCO size",
        "A synthetic COCO in Karpathy's layout at growing sizes (JPEGs, or an annotations-only index): prepare, "
        "the first batch, loader throughput, the feature cache, and the process tree's peak memory. Each "
        "record is one labelled run; the JSON's note says what each label measured.",
        "make bench-scale",
        _scale,
    ),
    (
        "threads",
        "CPU threads",
        "The demo's train step under each thread setting, alone and beside a busy core: the evidence for "
        "`trainer.threads`' default.",
        "make bench-threads",
        _threads,
    ),
    (
        "gpu",
        "GPU",
        "One training step on a CUDA device, eager against the fast path (`trainer.compile`): the demo recipe "
        "(fp32, bf16, fp16), the COCO recipe on synthetic inputs (ResNet-101 at 224 px, 14x14x2048, H=512, "
        "V=10,000, 64 images x 5 captions) with a frozen and a fine-tuned encoder, the tutorial's reference "
        "decoder on the same batches, batched beam search, and the data pipeline against what the step "
        "consumes; warm-up (compile, CUDA-graph capture) is reported apart. The CUDA code paths (fp16 and bf16 "
        "autocast, fine-tuning with channels_last, resume) are checked by `bench/gpu_check.sh`, whose logs are "
        "in `docs/gpu/`; batched beam search on CUDA is also the `cuda` record of `beam.json` above.",
        "make bench-gpu",
        _gpu,
    ),
]


def speed_section(bench: Path) -> list[str]:
    """One subsection per benchmark: what it measures, how to reproduce it, its table (or what writes it)."""
    lines = _section(
        SPEED_TITLE,
        "Each benchmark is one `make bench-*` target (`mk/bench.mk`; options in "
        "[benchmarks.md](benchmarks.md)) that prints a table and writes `bench/results/<name>.json`. Timings "
        "are the best of several rounds with the variants interleaved, so load hits them alike; the load "
        "average at start and end is in each JSON, and absolute times move with it more than ratios do.",
    )
    for name, title, what, command, render in BENCHMARKS:
        rel = f"bench/results/{name}.json"
        lines += [f"### {title}", "", what, ""]
        d = _load(bench, f"{name}.json")
        if d is None:
            lines += _missing(rel, command)
            continue
        lines += [_reproduce(rel, command), "", *render(d), ""]
    return lines


# ----------------------------------------------------------------------------------------- summary


def _quality_summary(q: dict[str, Any] | None) -> list[str]:
    """One row per kind of model (recipe, objective, attention, context): its decode with the best test
    object F1. The recipe is the run's experiment less its SCST suffix (quality_searched(_scst) apart
    from the hand-made quality(_scst)); records from before it was kept count as one recipe."""
    if q is None:
        return ["Not measured yet: `make bench-quality` writes `bench/results/quality.json`."]
    runs, decodes, rows = _quality_grid(q)
    kinds: dict[tuple, tuple[str, str]] = {}
    for r in q.get("runs", []):
        recipe = (r.get("experiment") or "quality").removesuffix("_scst")
        kind = (recipe, r.get("objective", "xe"), r.get("attention", "soft"), r.get("context", "soft"))
        for decode in decodes:
            test = rows.get((r["run"], decode, "test"))
            best = kinds.get(kind)
            if test and (best is None or test["object_f1"] > rows[(*best, "test")]["object_f1"]):
                kinds[kind] = (r["run"], decode)
    records = {r["run"]: r for r in q.get("runs", [])}
    table = []
    for run, decode in sorted(kinds.values(), key=lambda k: -rows[(*k, "test")]["object_f1"]):
        test, novel = rows[(run, decode, "test")], rows.get((run, decode, "test_novel"), {})
        table.append(
            [
                _describe(run, records.get(run)),
                _decode(decode, q.get("decode", {}).get(decode)),
                fmt(test.get("bleu4"), 1),
                fmt(test.get("cider_d"), 0),
                fmt(test.get("object_f1"), 3),
                fmt(test.get("exact_scene"), 3),
                fmt(novel.get("object_f1"), 3),
            ]
        )
    return _table(
        [
            "model (its best decode)",
            "decode",
            "BLEU-4",
            "CIDEr-D",
            "object F1",
            "exact scene",
            "test_novel object F1",
        ],
        table,
    )


def _ablation_summary(sweeps: Path) -> list[str]:
    config = _claims_config()
    by_scale = _reports(sweeps, _ablation_groups(config))
    rows = []
    for scale, reports in by_scale.items():
        for group, s in reports.items():
            ids = {k: [c["id"] for c in s["claims"] if c["verdict"] == k] for k in ("holds", "contradicted")}
            rows.append(
                [
                    group if len(by_scale) == 1 else f"{group} ({scale})",
                    str(len(s["seeds"])),
                    report_render.decisive_share(s["claims"]),
                    ", ".join(ids["holds"]) or "–",
                    ", ".join(ids["contradicted"]) or "–",
                ]
            )
    if not rows:
        return ["No sweep report yet: `make sweep GROUP=<group> SCALE=cpu`."]
    return _table(["group", "seeds", "decisive", "holds", "contradicted"], rows)


def _speed_summary(bench: Path) -> list[str]:
    rows = []
    fc = _load(bench, "feature_cache.json")
    if fc:
        epoch = {r["mode"]: r["epoch_s"] for r in fc["rows"]}
        rows.append(
            [
                "epoch on cached features vs encoding every step",
                f"{_times(fc['speedup'])} ({' vs '.join(fmt(v, 1) + ' s' for v in epoch.values())})",
            ]
        )
    beam = _load(bench, "beam.json")
    if beam and "cpu" in beam:
        batched = next((r for r in beam["cpu"]["results"] if r["method"] == "batched"), None)
        if batched:
            rows.append(
                [
                    f"batched beam search vs the tutorial's per-image one (CPU, {batched['model']})",
                    f"{_times(batched.get('speedup_vs_tutorial'))}; vs ours per image {_times(batched['speedup'])}",
                ]
            )
    ts = _load(bench, "train_speed.json")
    if ts:
        first = ts["rows"][0]["model"]
        impl = {r["impl"]: r for r in ts["rows"] if r["model"] == first}
        if "captioner" in impl and "tutorial" in impl:
            ours, theirs = impl["captioner"]["captions_per_s"], impl["tutorial"]["captions_per_s"]
            rows.append(
                [
                    f"decoder train step vs the tutorial design ({first})",
                    f"{fmt(ours, 0)} vs {fmt(theirs, 0)} captions/s ({_times(ours / theirs)}); "
                    f"FLOP/s / sgemm {fmt(impl['captioner']['util'], 2)}",
                ]
            )
    so = _load(bench, "sweep_overhead.json")
    if so:
        target = so.get("target_s")
        rows.append(
            [
                "sweep overhead per trial, training excluded",
                f"{fmt(so['per_trial_total_s'], 2)} s" + (f" (target <= {target:g} s)" if target else ""),
            ]
        )
    ld = _load(bench, "loader.json")
    if ld:
        zero = {r["mode"]: r["captions_per_s"] for r in ld["rows"] if r["workers"] == 0}
        rows.append(
            [
                "loader, 0 workers: " + " / ".join(zero),
                " / ".join(_thousands(v) for v in zero.values()) + " captions/s",
            ]
        )
    gpu = _load(bench, "gpu.json")
    if gpu and "targets" in gpu and not gpu.get("setup", {}).get("quick"):
        ok = {r["id"]: r for r in gpu["rows"] if r.get("status") == "ok"}
        shown = [
            i
            for i in (
                "demo/eager-bf16",
                "demo/fast-bf16",
                "coco-frozen/fast-bf16",
                "coco-finetuned/fast-bf16",
            )
            if i in ok
        ]
        if shown:
            rows.append(
                [
                    f"training on one {gpu['setup'].get('device')}",
                    "; ".join(f"`{i}` {_thousands(ok[i]['captions_per_s'])}" for i in shown) + " captions/s",
                ]
            )
    if not rows:
        return ["Not measured yet: `make bench` runs every benchmark."]
    return _table(["what", "result"], rows)


def summary(bench: Path, sweeps: Path) -> str:
    """Three small tables for the README: shapes quality, ablation verdicts per group, speed."""
    page = "docs/results.md"
    lines = [
        "<!-- Generated by docs/build_results.py from bench/results/*.json and sweeps/results/*.json; "
        f"run `{FIX}` after they change. Links are relative to the repository root: this file is meant "
        "for the README. -->",
        "",
        f"**Shapes quality** (test split; every decode and the targets: [{page}]({page}{_anchor(QUALITY_TITLE)})):",
        "",
        *_quality_summary(_load(bench, "quality.json")),
        "",
        f"**The seed's ablations**, claims decided over seeds (per-version intervals, every claim and the "
        f"seeds an undecided one needs: [{page}]({page}{_anchor(ABLATION_TITLE)})):",
        "",
        *_ablation_summary(sweeps),
        "",
        f"**Speed** (every benchmark: [{page}]({page}{_anchor(SPEED_TITLE)})):",
        "",
        *_speed_summary(bench),
    ]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- page


def page(bench: Path, sweeps: Path) -> str:
    """docs/results.md."""
    lines = [
        "# Results",
        "",
        "<!-- Generated by docs/build_results.py from bench/results/*.json and sweeps/results/*.json: edit "
        f"the generator, not this file, and run `{FIX}` after the JSON changes (tests/test_results_page.py "
        "fails while this file is out of date). -->",
        "",
        "Every number on this page is read from the JSON that the benchmarks (`bench/`, one `make bench-*` "
        "target each) and the sweep reports (`sweeps/report.py`) write. Each section links its JSON, which "
        "also records the git commit, machine, command, date and load average of the measurement. Small "
        "versions of the headline tables, for the README: [results_summary.md](results_summary.md).",
        "",
        *(f"- [{t}]({_anchor(t)})" for t in (QUALITY_TITLE, ABLATION_TITLE, SPEED_TITLE)),
        "",
        *quality_section(bench),
        *search_section(sweeps),
        *ablation_section(sweeps),
        *speed_section(bench),
    ]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


README = Path("README.md")
# The README's "Results in brief" holds the summary between these lines; everything else in it is prose.
BEGIN, END = "<!-- results-summary:begin -->", "<!-- results-summary:end -->"


def readme_with(summary_text: str, root: Path = ROOT) -> str | None:
    """The README with the summary (less its header comment) between its markers; None without them."""
    text = (root / README).read_text()
    if BEGIN not in text or END not in text:
        return None
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    body = summary_text.split("\n", 1)[1].strip("\n")
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def render(
    bench: Path = ROOT / "bench" / "results", sweeps: Path = ROOT / "sweeps" / "results"
) -> dict[Path, str]:
    """Both pages' text and the README with its summary, by path relative to the repository root."""
    pages = {PAGE: page(bench, sweeps), SUMMARY: summary(bench, sweeps)}
    readme = readme_with(pages[SUMMARY])
    return pages if readme is None else {**pages, README: readme}


def stale(pages: dict[Path, str], root: Path = ROOT) -> list[Path]:
    """The pages whose committed file differs from ``pages``."""
    return [p for p, text in pages.items() if not (root / p).is_file() or (root / p).read_text() != text]


def main() -> None:
    """Write both pages, or with --check say which are out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is out of date")
    args = parser.parse_args()
    pages = render()
    if args.check:
        old = stale(pages)
        if old:
            sys.exit(f"error: {', '.join(map(str, old))} out of date with the JSON; run `{FIX}`")
        return
    for rel, text in pages.items():
        (ROOT / rel).write_text(text)
        print(f"wrote {rel}")


if __name__ == "__main__":
    main()
