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

This script is the command line; report_collect.py gathers and judges the runs, report_render.py writes
the Markdown and the figure, report_publish.py writes the files and logs them to MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from report_collect import collect, merge, read_report, summarize
from report_publish import compare_url, log_to_parent, write
from report_render import markdown, overview


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
