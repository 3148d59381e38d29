"""Compare a sweep's runs with the seed's ablation log: a Markdown table, a JSON file and a plot.

    python sweeps/report.py --experiment sweep-teacher_forcing-cpu [--tracking-uri sqlite:///mlflow.db]

Reads the child runs of the sweep's MLflow experiment (one per seed version, tagged by the version
files in sweeps/version/), takes each run's best validation BLEU-4 and the CIDEr-D and object F1 of
that validation, and checks the seed's conclusions for the group on our numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

Scores = dict[str, float]
Check = Callable[[dict[str, Scores]], bool]


def _b(r: dict[str, Scores], v: str) -> float:
    return r[v]["bleu4"]


# The seed's conclusions per group (its README), as checks on our val BLEU-4 per version.
CONCLUSIONS: dict[str, list[tuple[str, list[str], Check]]] = {
    "optim_dropout": [
        (
            "adamw (v16) makes no difference from adam (v15): within 1 BLEU-4",
            ["v15", "v16"],
            lambda r: abs(_b(r, "v16") - _b(r, "v15")) < 1.0,
        ),
        (
            "more dropout helped this small model: v17 > v15",
            ["v15", "v17"],
            lambda r: _b(r, "v17") > _b(r, "v15"),
        ),
    ],
    "pretrain_finetune": [
        (
            "training from scratch (v18) is the worst",
            ["v18", "v19", "v20", "v21", "v22"],
            lambda r: _b(r, "v18") == min(_b(r, v) for v in ("v18", "v19", "v20", "v21", "v22") if v in r),
        ),
        (
            "a pretrained encoder beats scratch: v19 > v18",
            ["v18", "v19"],
            lambda r: _b(r, "v19") > _b(r, "v18"),
        ),
        ("fine-tuning improves on frozen: v20 > v19", ["v19", "v20"], lambda r: _b(r, "v20") > _b(r, "v19")),
        (
            "lower encoder lr is best: v22 >= v20, v21",
            ["v20", "v21", "v22"],
            lambda r: _b(r, "v22") >= max(_b(r, "v20"), _b(r, "v21")),
        ),
        (
            "a new 1x1 conv to 256 features (v23) underperforms frozen full features (v19)",
            ["v19", "v23"],
            lambda r: _b(r, "v23") < _b(r, "v19"),
        ),
        (
            "reduced features with fine-tuning (v24) come close to v21: within 1 BLEU-4",
            ["v21", "v24"],
            lambda r: abs(_b(r, "v24") - _b(r, "v21")) < 1.0,
        ),
    ],
    "teacher_forcing": [
        (
            "scheduled inv_sigmoid (best of v42, v43) beats always teacher forcing (v44)",
            ["v42", "v43", "v44"],
            lambda r: max(_b(r, "v42"), _b(r, "v43")) > _b(r, "v44"),
        ),
        (
            "no teacher forcing (v45) is by far the worst",
            ["v39", "v40", "v41", "v42", "v43", "v44", "v45"],
            lambda r: _b(r, "v45") == min(_b(r, v) for v in r),
        ),
        (
            "more teacher forcing for longer helps: v43 (k=1.2) > v39 (k=0.5)",
            ["v39", "v43"],
            lambda r: _b(r, "v43") > _b(r, "v39"),
        ),
    ],
    "optical_finetune": [
        (
            "fine-tuning helps without augmentation: v60 > v58",
            ["v58", "v60"],
            lambda r: _b(r, "v60") > _b(r, "v58"),
        ),
        (
            "fine-tuning helps with augmentation: v62 > v61",
            ["v61", "v62"],
            lambda r: _b(r, "v62") > _b(r, "v61"),
        ),
    ],
    "label_smoothing": [
        (
            "any label smoothing beats one-hot labels: min(v64..v68) > v63",
            ["v63", "v64", "v65", "v66", "v67", "v68"],
            lambda r: min(_b(r, v) for v in ("v64", "v65", "v66", "v67", "v68")) > _b(r, "v63"),
        ),
        (
            "robust to most smoothing values: v64..v68 within 2 BLEU-4",
            ["v64", "v65", "v66", "v67", "v68"],
            lambda r: (
                max(_b(r, v) for v in ("v64", "v65", "v66", "v67", "v68"))
                - min(_b(r, v) for v in ("v64", "v65", "v66", "v67", "v68"))
                < 2.0
            ),
        ),
    ],
    "tf_scheduler": [
        (
            "inv_sigmoid beats always with the same plateau schedule: v72 > v70",
            ["v70", "v72"],
            lambda r: _b(r, "v72") > _b(r, "v70"),
        ),
        (
            "plateau + inv_sigmoid (v72) is the best",
            ["v70", "v71", "v72", "v73", "v74"],
            lambda r: _b(r, "v72") == max(_b(r, v) for v in r),
        ),
        (
            "the exponential schedule (v73) is the worst",
            ["v70", "v71", "v72", "v73", "v74"],
            lambda r: _b(r, "v73") == min(_b(r, v) for v in r),
        ),
    ],
}


def collect(tracking_uri: str, experiment: str) -> dict[str, dict]:
    """Latest finished child run per seed version: tags, best val BLEU-4 and that validation's scores."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no MLflow experiment {experiment!r} in {tracking_uri}; run the sweep first")
    runs = client.search_runs(
        [exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["start_time DESC"]
    )
    rows: dict[str, dict] = {}
    for run in runs:
        version = run.data.tags.get("seed_version")
        if not version or version in rows:
            continue
        history = {
            k: client.get_metric_history(run.info.run_id, f"val.{k}")
            for k in ("bleu4", "cider_d", "object_f1")
        }
        if not history["bleu4"]:
            continue
        best = max(history["bleu4"], key=lambda m: m.value)
        at = {k: next((m.value for m in h if m.step == best.step), math.nan) for k, h in history.items()}
        rows[version] = {
            "flags": run.data.tags.get("seed_flags", ""),
            "seed_bleu4": run.data.tags.get("seed_bleu4", "n/a"),
            "scores": at,
            "test": {
                k.removeprefix("test."): v for k, v in run.data.metrics.items() if k.startswith("test.")
            },
            "run_id": run.info.run_id,
        }
    return rows


def report(group: str, scale: str, rows: dict[str, dict], out: Path) -> str:
    """Write ``<out>.md``, ``<out>.json`` and ``<out>.png``; return the Markdown."""
    scores = {v: row["scores"] for v, row in rows.items()}
    lines = [
        f"# Seed ablation `{group}` at scale `{scale}`",
        "",
        "| version | seed flags | our val BLEU-4 | CIDEr-D | object F1 | seed BLEU-4 |",
        "|---|---|---|---|---|---|",
    ]
    for v in sorted(rows):
        s = rows[v]["scores"]
        lines.append(
            f"| {v} | `{rows[v]['flags']}` | {s['bleu4']:.2f} | {s['cider_d']:.2f} | {s['object_f1']:.3f} | {rows[v]['seed_bleu4']} |"
        )
    lines += ["", "| seed conclusion | holds here? |", "|---|---|"]
    verdicts = []
    for text, needs, check in CONCLUSIONS.get(group, []):
        verdict = "not run" if any(v not in scores for v in needs) else ("yes" if check(scores) else "no")
        verdicts.append({"conclusion": text, "holds": verdict})
        lines.append(f"| {text} | {verdict} |")
    md = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(
        json.dumps({"group": group, "scale": scale, "rows": rows, "conclusions": verdicts}, indent=2)
    )
    _plot(group, scale, rows, out.with_suffix(".png"))
    return md


def _plot(group: str, scale: str, rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = sorted(rows)
    ours = [rows[v]["scores"]["bleu4"] for v in versions]
    seed = [
        float(rows[v]["seed_bleu4"]) if rows[v]["seed_bleu4"] not in ("n/a", "") else math.nan
        for v in versions
    ]
    x = range(len(versions))
    fig, ax = plt.subplots(figsize=(1.1 * len(versions) + 2, 3.2))
    ax.bar([i - 0.2 for i in x], ours, 0.4, label=f"ours ({scale}, val)")
    ax.bar([i + 0.2 for i in x], seed, 0.4, label="seed (COCO subset)")
    ax.set_xticks(list(x), versions)
    ax.set_ylabel("BLEU-4")
    ax.set_title(f"seed ablation: {group}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    """CLI: one report per sweep experiment."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--experiment", required=True, help="MLflow experiment of the sweep, e.g. sweep-teacher_forcing-cpu"
    )
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument(
        "--out", default=None, help="output path without suffix (default sweeps/results/<group>_<scale>)"
    )
    args = p.parse_args()
    _, group, scale = args.experiment.split("-", 2)
    out = Path(args.out or f"sweeps/results/{group}_{scale}")
    print(report(group, scale, collect(args.tracking_uri, args.experiment), out))


if __name__ == "__main__":
    main()
