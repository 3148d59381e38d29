"""What a sweep costs per trial besides training: the Optuna sweeper, MLflow tracking, Hydra composition.

    python bench/sweep_overhead.py                      # defaults below; about a minute on a busy CPU
    python bench/sweep_overhead.py --trials 2 6 --repeats 1 --mlflow-runs 3

Everything runs in a temporary folder with its own Optuna SQLite storage and its own MLflow store;
the repository's ``mlflow.db`` and ``multirun/`` are never opened. Three parts, each per trial:

(a) sweeper: the tiny app of ``tests/sweeper_app`` (a no-op task) swept with N1 and N2 trials; the
    per-trial cost is the slope (T(N2) - T(N1)) / (N2 - N1), so interpreter start and imports, paid
    once per sweep, drop out (they are reported as the per-sweep intercept). It covers ask, tell,
    grid claim, heartbeat and Hydra's per-job work (compose the tiny config, job folder, logging).
(b) MLflow: ``build_tracker`` with the flattened resolved train config (under a sweep, so the
    parent-run lookup runs too), version tags, a smoke run's worth of metric batches, the
    config.json and metrics.json artifacts, finish. Once-only costs are reported beside: the first
    run of a new store (creates its tables) and the first run of a new process on an existing store.
(c) Hydra: compose + resolve of the real train config for one trial of a seed sweep
    (``sweep=label_smoothing scale=smoke version=v63``), plus ``validate_config``.

With Hydra's basic launcher the trials run in the sweep's own process: train.py's interpreter and
imports are paid once per sweep, not per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from common import Run, print_table

from captioner.tracking import SWEEP_STUDY_ENV, SWEEP_TRIAL_ENV, build_tracker, flatten

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "sweeper_app" / "my_app.py"
TRIAL_OVERRIDES = ["sweep=label_smoothing", "scale=smoke", "version=v63"]
TARGET_S = 3.0


@contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (Hydra's ``file://sweeps`` search path and MLflow's artifact root are cwd-relative)."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def sweep_wall(tmp: Path, tag: str, sampler: str, n_trials: int) -> float:
    """Wall seconds of one whole sweep of the no-op app with ``n_trials`` trials, in a fresh study."""
    run_dir = tmp / f"sweep-{tag}"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        f"hydra/sweeper/sampler={sampler}",
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.study_name=bench",
        f"hydra.sweeper.storage=sqlite:///{run_dir}/optuna.db",
        f"hydra.sweep.dir={run_dir}/multirun",
        "sleep=0.0",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep of {APP.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    done = len(list((run_dir / "multirun").glob("[0-9]*")))
    if done != n_trials:
        raise RuntimeError(f"sweep of {APP.name} ran {done} trials, expected {n_trials}")
    return wall


def bench_sweeper(tmp: Path, sampler: str, lo: int, hi: int, repeats: int) -> dict[str, Any]:
    """Per-trial slope and per-sweep intercept of the sweeper on a no-op task (fastest of ``repeats``)."""
    sweep_wall(tmp, f"{sampler}-warmup", sampler, 1)  # untimed: the first start reads cold files
    walls = {
        n: min(sweep_wall(tmp, f"{sampler}-{n}-{r}", sampler, n) for r in range(repeats)) for n in (lo, hi)
    }
    per_trial = (walls[hi] - walls[lo]) / (hi - lo)
    return {
        "sampler": sampler,
        "trials": [lo, hi],
        "sweep_wall_s": [round(walls[lo], 3), round(walls[hi], 3)],
        "per_trial_s": per_trial,
        "per_sweep_s": walls[lo] - lo * per_trial,
    }


def bench_compose(repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seconds to compose + resolve one trial's train config and to validate it; and the resolved config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from captioner.config import register
    from captioner.train.validate import validate_config

    register()
    compose_times, validate_times = [], []
    with chdir(REPO), initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="train"):
        for _ in range(repeats + 1):  # the first one warms Hydra's caches, as the sweep's first job does
            start = time.perf_counter()
            cfg = compose("config", overrides=TRIAL_OVERRIDES, return_hydra_config=True)
            # As Hydra's run_job: publish the hydra node (for ${hydra:...}), then drop it from the task's cfg.
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
            resolved = OmegaConf.to_container(cfg, resolve=True)
            compose_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            validate_config(cfg)
            validate_times.append(time.perf_counter() - start)
    return {
        "overrides": TRIAL_OVERRIDES,
        "first_s": compose_times[0],
        "compose_resolve_s": statistics.median(compose_times[1:]),
        "validate_s": statistics.median(validate_times[1:]),
    }, resolved


def one_tracked_run(tmp: Path, params: dict[str, Any], trial: int, metric_calls: int) -> dict[str, float]:
    """Seconds per phase of one trial's MLflow run, as the training loop makes it."""
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ[SWEEP_TRIAL_ENV] = str(trial)
    times = {}
    start = time.perf_counter()
    tracker = build_tracker(
        enabled=True,
        tracking_uri=tracking_uri,
        experiment="sweep-bench",
        run_name=None,
        params=params,
        tags=dict(params["logger"]["tags"]),
    )
    times["create_params_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(metric_calls):  # train.* every log_every steps, then val.* and test.* once
        tracker.log_metrics({f"train.m{i}": float(i + step) for i in range(8)}, step=step)
    tracker.log_metrics({f"val.m{i}": float(i) for i in range(12)}, step=metric_calls)
    tracker.log_metrics({f"test.m{i}": float(i) for i in range(12)}, step=0)
    times["metrics_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for name, obj in (("config.json", params), ("metrics.json", {"objective": 0.5})):
        path = tmp / name
        path.write_text(json.dumps(obj, indent=2))
        tracker.log_artifact(path)
    times["artifacts_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tracker.finish("FINISHED")
    times["finish_s"] = time.perf_counter() - start
    times["total_s"] = sum(times.values())
    return times


def bench_mlflow(tmp: Path, params: dict[str, Any], runs: int, metric_calls: int) -> dict[str, Any]:
    """Median per-phase seconds over ``runs`` trials; the first (store creation, parent run) separately."""
    store = tmp / "mlflow"
    store.mkdir()
    os.environ[SWEEP_STUDY_ENV] = "bench"
    try:
        with chdir(store):  # the default artifact root (./mlartifacts) lands in the temp store
            all_runs = [one_tracked_run(store, params, trial, metric_calls) for trial in range(runs + 1)]
    finally:
        os.environ.pop(SWEEP_STUDY_ENV, None)
        os.environ.pop(SWEEP_TRIAL_ENV, None)
    steady = all_runs[1:]
    # The first run above also created the store's tables; a new sweep on an existing store pays only
    # its first client (engine, schema check) once: time that in a fresh process (imports excluded).
    (store / "params.json").write_text(json.dumps(params))
    code = (
        "import json, time\n"
        "from captioner.tracking import build_tracker\n"
        "params = json.load(open('params.json'))\n"
        "start = time.perf_counter()\n"
        f"build_tracker(True, 'sqlite:///{store / 'mlflow.db'}', 'sweep-bench', None, params).finish()\n"
        "print(time.perf_counter() - start)\n"
    )
    env = {**os.environ, SWEEP_STUDY_ENV: "bench", SWEEP_TRIAL_ENV: str(runs + 1)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=store, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"first tracked run in a new process failed: {proc.stderr[-2000:]}")
    first_in_process = float(proc.stdout.strip().splitlines()[-1])
    return {
        "params": len(flatten(params)),
        "metric_calls": metric_calls + 2,
        "runs": runs,
        "new_store_first_run_s": all_runs[0]["total_s"],
        "existing_store_first_run_s": first_in_process,
        **{k: statistics.median(r[k] for r in steady) for k in steady[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, nargs=2, default=[2, 12], help="N1 N2 trials of the no-op sweep"
    )
    parser.add_argument("--samplers", nargs="+", default=["grid", "tpe"], choices=["grid", "tpe", "random"])
    parser.add_argument("--repeats", type=int, default=2, help="fastest of this many sweeps per N")
    parser.add_argument("--mlflow-runs", type=int, default=8, help="tracked runs after the first")
    parser.add_argument("--metric-calls", type=int, default=10, help="train metric batches per run")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/sweep_overhead.json)")
    args = parser.parse_args()
    lo, hi = args.trials
    if not 1 <= lo < hi <= 15:
        parser.error(f"--trials {lo} {hi}: need 1 <= N1 < N2 <= 15 (the tiny app's grid has 15 points)")
    torch.set_num_threads(1)
    run = Run("sweep_overhead")

    with tempfile.TemporaryDirectory(prefix="sweep_overhead-") as tmp_name:
        tmp = Path(tmp_name)
        sweeper = [bench_sweeper(tmp, s, lo, hi, args.repeats) for s in args.samplers]
        compose_rec, resolved = bench_compose(repeats=max(3, args.repeats))
        mlflow_rec = bench_mlflow(tmp, resolved, args.mlflow_runs, args.metric_calls)

    # The sum takes the slowest sampler; the tiny app's own compose is inside (a), so it counts twice (bound).
    worst = max(sweeper, key=lambda r: r["per_trial_s"])
    rows = [
        {
            "part": f"(a) sweeper, {r['sampler']} (no-op task)",
            "s": r["per_trial_s"],
            "note": f"{r['per_sweep_s']:.2f} s once per sweep",
        }
        for r in sweeper
    ]
    rows += [
        {
            "part": "(b) MLflow run + params",
            "s": mlflow_rec["create_params_s"],
            "note": f"{mlflow_rec['params']} params",
        },
        {
            "part": "(b) MLflow metrics",
            "s": mlflow_rec["metrics_s"],
            "note": f"{mlflow_rec['metric_calls']} batches",
        },
        {"part": "(b) MLflow artifacts", "s": mlflow_rec["artifacts_s"], "note": "config.json, metrics.json"},
        {
            "part": "(b) MLflow finish",
            "s": mlflow_rec["finish_s"],
            "note": f"first of a sweep {mlflow_rec['existing_store_first_run_s']:.2f} s",
        },
        {
            "part": "(c) Hydra compose + resolve",
            "s": compose_rec["compose_resolve_s"],
            "note": " ".join(TRIAL_OVERRIDES),
        },
        {"part": "(c) validate_config", "s": compose_rec["validate_s"], "note": ""},
    ]
    total = (
        worst["per_trial_s"]
        + mlflow_rec["total_s"]
        + compose_rec["compose_resolve_s"]
        + compose_rec["validate_s"]
    )
    rows.append(
        {"part": f"total per trial ({worst['sampler']})", "s": total, "note": f"target <= {TARGET_S} s"}
    )
    print_table(
        rows, [("part", "part"), ("s", "s/trial"), ("note", "note")], title="sweep overhead per trial"
    )
    run.write(
        {
            "per_trial_total_s": round(total, 4),
            "target_s": TARGET_S,
            "within_target": total <= TARGET_S,
            "launcher": "basic (trials run in the sweep's process: no interpreter start per trial)",
            "sweeper": sweeper,
            "mlflow": mlflow_rec,
            "compose": compose_rec,
            "rows": rows,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
