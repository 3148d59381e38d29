"""Publish a sweep report: its .md/.json/.png files and its study's MLflow parent run.

The parent gets the files as artifacts, the per-version means and intervals as metrics
(``v42.val_bleu4.mean``, ``...ci_low``, ``...ci_high``) and the verdicts as tags; under it, one summary
run per version carries that version's means, intervals and the seed's reported BLEU-4, so MLflow's
compare page shows the versions side by side.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from report_collect import as_float
from report_render import SHOWN, markdown, plot


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
        metrics[f"{v}.seed_bleu4"] = as_float(row["seed_bleu4"])
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
        metrics = {"bleu4_val_seed": as_float(row["seed_bleu4"])}
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
