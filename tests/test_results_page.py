"""docs/results.md and docs/results_summary.md: generated from the committed JSON, and the generator's edge cases."""

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _module("build_results", REPO / "docs" / "build_results.py")


def test_results_pages_match_the_committed_json() -> None:
    """Regenerated in memory from bench/results and sweeps/results, both pages equal the committed files."""
    pages = build.render()
    stale = build.stale(pages)
    assert not stale, (
        f"{', '.join(map(str, stale))} out of date with bench/results/*.json and sweeps/results/*.json: "
        "run `make results` and commit the result"
    )


def test_absent_benchmarks_name_the_command_that_writes_them(tmp_path: Path) -> None:
    """Only some benchmark JSON present, no sweep archive: every absent file gets one line naming its
    command; present optional records (threads, an unknown gpu layout) get their tables."""
    bench, sweeps = tmp_path / "bench", tmp_path / "sweeps"
    bench.mkdir()
    shutil.copy(REPO / "bench" / "results" / "loader.json", bench)
    (bench / "threads.json").write_text(
        json.dumps(
            {
                "setup": {"targets": {"alone_vs_best": 0.9, "busy_vs_alone": 0.8}},
                "rows": [
                    {
                        "setting": "threads=auto",
                        "threads_alone": [2],
                        "threads_beside_busy": [1],
                        "alone": 300.0,
                        "beside_busy": 250.0,
                        "alone_vs_best": 1.0,
                        "busy_vs_alone": 0.833,
                        "meets_targets": True,
                    }
                ],
            }
        )
    )
    (bench / "gpu.json").write_text(json.dumps({"rows": [{"step": "train", "captions_per_s": 1234.5}]}))
    sweeps.mkdir()
    shutil.copy(REPO / "sweeps" / "results" / "3seeds" / "tf_scheduler_cpu.json", sweeps)  # frozen: 3 seeds

    pages = build.render(bench, sweeps)
    page, summary = pages[build.PAGE], pages[build.SUMMARY]
    assert "Not measured yet: `make bench-quality` writes `bench/results/quality.json`." in page
    assert "Not measured yet: `make bench-beam` writes `bench/results/beam.json`." in page
    assert "Not measured yet: `make bench-probe` writes `bench/results/probe_layers.json`." in page
    assert "| `threads=auto` | 2 | 300.0 | 250.0 | 1.000 | 0.833 | yes |" in page
    assert "| train | 1234.500 |" in page  # a layout the generator does not know: every column as it is
    assert "No archived report at scale `cpu`" in page
    assert "[tf_scheduler](#tf_scheduler-at-cpu)" in page and "optim_dropout" not in page
    assert "Not measured yet: `make bench-quality`" in summary and "| tf_scheduler | 3 | 0 of 3 |" in summary
    assert (
        "| loader, 0 workers: images 224px + augment / cached features | 135 / 16,940 captions/s |" in summary
    )


def _runs(seeds: range) -> list[dict]:
    """optim_dropout per-seed runs: v16 equals v15 within 0.1, v17 beats v15 by about 2 at every seed."""
    v15 = [30.0, 31.0, 29.5, 30.5, 30.2]
    step = {"v15": [0.0] * 5, "v16": [0.1, -0.1, 0.05, -0.05, 0.0], "v17": [2.0, 1.0, 2.0, 2.5, 1.8]}
    return [
        {
            "version": v,
            "seed": s,
            "run_id": f"{v}{s}" * 4,
            "parent_run_id": None,
            "flags": "",
            "seed_bleu4": "n/a",
            "best_validation": "5 of 5",
            "start": 0,
            "end": 1000,
            "metrics": {"val.bleu4": v15[s] + d[s], "test.object_f1": 0.85, "time.train_s": 100.0},
        }
        for v, d in step.items()
        for s in seeds
    ]


def test_seeds_come_from_the_reports_and_a_changed_verdict_is_named(tmp_path: Path) -> None:
    """A 5-seed report beside its archived 2-seed one: the page counts seeds from each JSON and names
    every claim whose verdict moved between them."""
    sweeps = tmp_path / "sweeps"
    (sweeps / "2seeds").mkdir(parents=True)
    for path, seeds in (
        (sweeps / "optim_dropout_cpu.json", 5),
        (sweeps / "2seeds" / "optim_dropout_cpu.json", 2),
    ):
        path.write_text(
            json.dumps(build.report_collect.summarize("optim_dropout", "cpu", _runs(range(seeds))))
        )

    page = build.render(tmp_path / "no-bench", sweeps)[build.PAGE]
    assert "| [optim_dropout](#optim_dropout-at-cpu) | 5 (0, 1, 2, 3, 4) | v15 |" in page
    assert "### Verdicts at 2 seeds and now (`cpu`)" in page
    assert (
        "**2 of 2 claims tested changed verdict**: optim_dropout adamw_same_as_adam, optim_dropout more_dropout_helps."
        in page
    )
    row = next(
        line for line in page.splitlines() if line.startswith("| optim_dropout | more_dropout_helps |")
    )
    assert "| not distinguishable at 2 seeds | 5 (0, 1, 2, 3, 4) |" in row
    assert row.endswith("| holds | **changed**: not distinguishable -> holds |")
