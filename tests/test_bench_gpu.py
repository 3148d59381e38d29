"""bench/gpu.py (issue 29) runs every leg at toy size on CPU, so the script a lent GPU gets once cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu  # noqa: E402

# Everything but the fast path, whose torch.compile takes minutes on a CPU (the slow test runs it).
EAGER_LEGS = ["demo/eager-*", "coco-*/eager-*", "reference", "beam", "pipeline"]


def _run(out: Path, legs: list[str], timeout: int) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCH / "gpu.py"), "--quick", "--legs", *legs]
    if out is not None:
        command += ["--out", str(out)]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout)


def _rate(row: dict) -> float:
    return row.get("captions_per_s") or row["images_per_s"]


def test_quick_run_measures_every_leg_and_writes_the_record(tmp_path):
    """Each eager leg gives its figures (not an error) on CPU; the CUDA-only ones say so; the record
    carries device, torch, commit and command, and the targets table says what applies on a CPU."""
    out = tmp_path / "gpu.json"
    _run(out, EAGER_LEGS, timeout=400)
    record = json.loads(out.read_text())
    assert record["git_commit"] and "--quick" in record["command"] and record["machine"]["torch"]
    assert record["setup"]["device"] == "cpu" and record["setup"]["compile_auto_takes_fast_path"] is False
    rows = {r["id"]: r for r in record["rows"]}
    assert list(rows) == gpu.selected(EAGER_LEGS)  # run order kept
    assert {i.split("/")[0] for i in rows} == {
        "demo",
        "coco-frozen",
        "coco-finetuned",
        "reference",
        "beam",
        "pipeline",
    }
    for ident, row in rows.items():
        if ident == "pipeline/nvjpeg":
            assert row["status"] == "skipped" and row["error"] == "skipped: CUDA only"
            continue
        assert row["status"] == "ok", row
        assert _rate(row) > 0 and row["steps" if ident != "pipeline/workers" else "images"] >= 1
    assert rows["demo/eager-fp32"]["ops_per_batch"] > 100 and rows["demo/eager-bf16"]["ops_per_batch"] > 100
    assert rows["coco-frozen/eager-bf16"]["captions_per_batch"] == 10  # 2 images x 5 captions at toy size
    assert rows["coco-frozen/eager-bf16"]["peak_memory_gib"] is None  # CUDA only
    assert rows["pipeline/workers"]["workers"] >= 1 and rows["pipeline/workers"]["images"] >= 2
    targets = {t["figure"]: t for t in record["targets"]}
    pipeline = targets["data pipeline, CPU workers / images the COCO fine-tuning step (eager bf16) consumes"]
    assert pipeline["value"] > 0 and pipeline["verdict"] == "n/a on CPU"  # the targets hold for one H100
    verdicts = {f: t["verdict"] for f, t in targets.items()}
    assert verdicts["demo recipe, training captions/s (fast bf16)"] == "not measured"


def test_quick_without_out_leaves_the_measured_record_alone(tmp_path):
    result = _run(None, ["pipeline/nvjpeg"], timeout=120)  # skipped on CPU: start-up only
    assert "wrote" not in result.stdout and "pipeline/nvjpeg skipped: skipped: CUDA only" in result.stdout


@pytest.mark.slow  # torch.compile of the demo and both COCO steps on a CPU: several minutes
def test_quick_fast_path_legs_time_and_count_operators(tmp_path):
    out = tmp_path / "gpu.json"
    _run(out, ["demo/*", "coco-*/fast-*"], timeout=1500)
    record = json.loads(out.read_text())
    rows = {r["id"]: r for r in record["rows"]}
    assert rows["demo/fast-fp16"]["status"] == "skipped"  # fp16 + GradScaler: CUDA only
    for ident in ("demo/fast-bf16", "coco-frozen/fast-bf16", "coco-finetuned/fast-bf16"):
        assert rows[ident]["status"] == "ok" and rows[ident]["captions_per_s"] > 0, rows[ident]
    assert rows["demo/fast-bf16"]["ops_per_batch"] > 0
    ops = next(t for t in record["targets"] if t["figure"].startswith("operators dispatched"))
    assert ops["value"] > 0 and ops["verdict"] in ("met", "missed")  # measurable on any device


def test_legs_pick_measurements_by_leg_or_pattern_in_run_order():
    assert gpu.selected(["demo"]) == [
        "demo/eager-fp32",
        "demo/eager-bf16",
        "demo/fast-bf16",
        "demo/fast-fp16",
    ]
    assert gpu.selected(["coco-*/fast-*", "beam"]) == [
        "coco-frozen/fast-bf16",
        "beam/batched-k5",
        "coco-finetuned/fast-bf16",  # the longest compile runs late
    ]
    assert gpu.selected(None) == list(gpu.MEASUREMENTS)
    with pytest.raises(SystemExit, match="--legs cocoa matches no measurement; use a leg"):
        gpu.selected(["demo", "cocoa"])


def test_default_budgets_fit_the_issue_s_eight_minutes():
    assert gpu.TOTAL_S <= 8 * 60 - 30  # room for imports and start-up
    assert all(0 < b <= gpu.TOTAL_S for b in gpu.MEASUREMENTS.values())


def test_batches_cycle_through_length_buckets():
    assert gpu.bucket_bounds(5, 16, 3) == [(5, 8), (9, 12), (13, 16)]
    assert gpu.bucket_bounds(5, 8, 1) == [(5, 8)]
    captions, lengths = gpu.random_captions(6, 9, 5, 30, torch.Generator().manual_seed(0))
    assert captions.shape == (6, 9) and lengths[0] == 9 and bool((lengths >= 5).all())
    for row, n in zip(captions.tolist(), lengths.tolist(), strict=True):
        assert row[0] == gpu.START_ID and row[n - 1] == gpu.END_ID and set(row[n:]) <= {gpu.PAD_ID}
        assert all(w >= len(gpu.SPECIALS) for w in row[1 : n - 1])


def test_busy_time_counts_overlapping_kernels_once():
    assert gpu.busy_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert gpu.busy_seconds([(5, 6), (0, 10)]) == 10
    assert gpu.busy_seconds([]) == 0


def test_hard_limit_stops_a_measurement_and_attempt_keeps_the_timing():
    start = time.perf_counter()
    with pytest.raises(gpu.Overrun, match="0 s budget"), gpu.hard_limit(0.2):
        while True:
            time.sleep(0.01)
    assert time.perf_counter() - start < 5
    result: dict = {}
    gpu.attempt(result, "gpu_busy", lambda: 1 / 0)
    gpu.attempt(result, "ops_per_batch", lambda: 7)
    assert result == {"gpu_busy_error": "ZeroDivisionError: division by zero", "ops_per_batch": 7}


def test_targets_give_met_and_missed_on_a_gpu_and_only_the_operator_ratio_on_a_cpu():
    def ctx(device: str) -> gpu.Context:
        rows = [
            {"id": "demo/eager-bf16", "status": "ok", "ops_per_batch": 1000, "captions_per_s": 900.0},
            {"id": "demo/fast-bf16", "status": "ok", "ops_per_batch": 150, "captions_per_s": 25_000.0},
            {"id": "coco-frozen/fast-bf16", "status": "ok", "captions_per_s": 20_000.0, "gpu_busy": 0.9},
            {"id": "reference/tutorial-bf16", "status": "ok", "captions_per_s": 2_000.0},
            {"id": "coco-finetuned/eager-bf16", "status": "ok", "images_per_s": 1000.0},
            {"id": "pipeline/workers", "status": "ok", "images_per_s": 1100.0},
            {"id": "coco-finetuned/fast-bf16", "status": "error", "error": "Overrun: stopped"},
        ]
        return gpu.Context(torch.device(device), gpu.QUICK, True, rows, gpu.Clock(torch.device("cpu")))

    on_gpu = gpu.targets(ctx("cuda"))
    assert [(t["value"], t["verdict"]) for t in on_gpu] == [
        (25_000.0, "met"),  # demo
        (20_000.0, "missed"),  # COCO frozen captions/s
        (0.9, "met"),  # GPU busy
        (None, "not measured"),  # fine-tuned: an error is no figure
        (10.0, "met"),  # ours / the reference
        (1.1, "missed"),  # CPU workers / the eager fine-tuning step, the fast one having failed
        (None, "not measured"),  # nvjpeg
        (0.15, "met"),  # operators
    ]
    assert (
        "(fast bf16) / the reference" in on_gpu[4]["figure"]
        and "(eager bf16) consumes" in on_gpu[5]["figure"]
    )
    assert on_gpu[0]["target"] == ">= 20,000" and on_gpu[7]["target"] == "<= 0.2"
    on_cpu = [t["verdict"] for t in gpu.targets(ctx("cpu"))]
    assert on_cpu == [*["n/a on CPU"] * 3, "not measured", "n/a on CPU", "n/a on CPU", "not measured", "met"]


def test_nvjpeg_leg_decodes_flips_and_resizes_a_batch():
    """The CUDA-only decode leg's plumbing, on the CPU's decode_jpeg."""
    ctx = gpu.Context(torch.device("cpu"), gpu.QUICK, True, [], gpu.Clock(torch.device("cpu")))
    ctx.stop_at = time.perf_counter() + 60
    result = gpu.nvjpeg_leg(ctx)
    assert result["images_per_batch"] == 2 and result["images_per_s"] > 0 and result["jpeg_kib"] > 0


def test_results_page_renders_the_targets_and_every_measurement(tmp_path):
    """docs/build_results.py's GPU section: the targets against the run, then one row per measurement."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_results", BENCH.parent / "docs" / "build_results.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    rows = [
        {
            "id": "demo/eager-bf16",
            "status": "ok",
            "captions_per_s": 1234.5,
            "step_ms": 25.9,
            "ops_per_batch": 5369,
        },
        {"id": "demo/fast-bf16", "status": "error", "error": "Overrun: stopped at its 100 s budget"},
        {"id": "pipeline/workers", "status": "ok", "images_per_s": 2500.0, "warmup_s": 1.5},
    ]
    ctx = gpu.Context(torch.device("cuda"), gpu.Sizes(), False, rows, gpu.Clock(torch.device("cpu")))
    record = {
        "setup": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"},
        "rows": rows,
        "targets": gpu.targets(ctx),
    }
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "gpu.json").write_text(json.dumps(record))
    page = build.render(bench, tmp_path / "sweeps")[build.PAGE]
    section = page.split("### GPU", 1)[1]
    assert (
        "Reproduce: `make bench-gpu`" in section and "Device: NVIDIA H100 80GB HBM3, torch 2.11.0." in section
    )
    assert (
        "| demo recipe, training captions/s (fast bf16) | ~1,000 (fp16) | ≥ 20,000 | – | not measured |"
        in section
    )
    assert "| `demo/eager-bf16` | ok | 1,234 | – | 25.9 | – | – | – | 5,369 |  |" in section
    assert "| `demo/fast-bf16` | error |" in section and "Overrun: stopped at its 100 s budget |" in section
    summary = build.render(bench, tmp_path / "sweeps")[build.SUMMARY]
    assert "| training on one NVIDIA H100 80GB HBM3 | `demo/eager-bf16` 1,234 captions/s |" in summary
