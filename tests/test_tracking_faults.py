"""MLflow faults against a real ``mlflow server`` on loopback: outages, hangs and a server that never returns.

Each test trains (or tracks) through a server we kill, SIGSTOP or restart on the same port and store,
and compares what MLflow ends up with against an uninterrupted run of the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow_server as servers
import pytest
import test_train
import torch
from test_train import ENV, REPO, train_cmd

from captioner.tracking import SPOOL_NAME, build_tracker, read_spool
from captioner.tracking.tracker import FINISH_GRACE_S

pytestmark = pytest.mark.slow  # a real server (~20 s to start) and three short trainings
shapes_data = test_train.shapes_data  # the session's generated data (a fixture)
mlflow_server = servers.mlflow_server  # one real server for this module (a fixture)
MlflowServer, metric_histories = servers.MlflowServer, servers.metric_histories
SYNC = "python -m captioner.tracking sync"


def _training(data_dir: Path, run_dir: Path, server: MlflowServer) -> list[str]:
    """A 3-epoch tiny training that logs a step metric every 2 steps to ``server``, as seed version v42."""
    return train_cmd(
        data_dir,
        run_dir,
        "trainer.epochs=3",
        "trainer.log_every=2",
        "trainer.threads=1",
        "version=v42",
        "logger=mlflow",
        f"logger.tracking_uri={server.uri}",
        "logger.experiment=faults",
    )


def _epochs_done(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]["epoch"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def _wait_epoch(proc: subprocess.Popen, run_dir: Path, epoch: int, log: Path) -> None:
    deadline = time.monotonic() + 600
    while _epochs_done(run_dir / "last.pt") < epoch:
        assert proc.poll() is None, f"run ended before epoch {epoch}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "run too slow"
        time.sleep(0.02)


def _spooled_histories(run_dir: Path) -> dict[str, list[tuple]]:
    """``{metric: [(step, value, timestamp)]}`` as training logged it (the run folder's own record)."""
    out: dict[str, list[tuple]] = {}
    for line in (run_dir / SPOOL_NAME).read_text().splitlines():
        record = json.loads(line)
        for key, value, ts, step in record.get("metrics", ()):
            out.setdefault(key, []).append((step, value if value == value else "nan", ts))
    return {k: sorted(v, key=lambda p: (p[0], p[2])) for k, v in out.items()}


def _without_time(histories: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Steps and values only, without the wall-clock metrics (``time.*``), which no two runs share."""
    return {k: [p[:2] for p in v] for k, v in histories.items() if not k.startswith("time.")}


@pytest.fixture(scope="module")
def reference(shapes_data: Path, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run of the same seed: its run folder and MLflow run id."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(
        _training(shapes_data, run_dir, mlflow_server), cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: MLflow" not in proc.stderr, proc.stderr[-3000:]
    return run_dir, read_spool(run_dir / SPOOL_NAME).run_id


def test_uninterrupted_run_records_provenance_best_metrics_and_seed_score(
    reference,
    mlflow_server: MlflowServer,
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, run_id = reference
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(run_id)
    commit = run.data.tags["mlflow.source.git.commit"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"v42-s0-{commit[:7]}"
    assert run.data.tags["git.dirty"] in ("true", "false")
    assert "train.py" in run.data.tags["command"] and "version=v42" in run.data.tags["overrides"]
    assert run.data.metrics["seed.bleu4"] == 21.79  # sweeps/version/v42.yaml's string tag, as a number
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best_epoch = metrics["best_epoch"]
    assert run.data.metrics["best.epoch"] == best_epoch
    assert run.data.metrics["best.bleu4"] == pytest.approx(metrics["objective"])
    assert {"best.cider_d", "best.object_f1"} <= set(run.data.metrics)
    assert run.data.metrics["test.bleu4"] == pytest.approx(metrics["test"]["bleu4"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # evaluate.py's run is nested under the training run it scored
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"checkpoint={run_dir / 'best.pt'}", "decode=greedy", "metrics=[bleu]",
         f"out={out}", f"logger.tracking_uri={mlflow_server.uri}"],
        cwd=REPO, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = client.get_run(read_spool(out / SPOOL_NAME).run_id)
    assert evaluation.data.tags["mlflow.parentRunId"] == run_id
    assert evaluation.data.tags["trained_run_id"] == run_id
    assert evaluation.info.experiment_id == run.info.experiment_id
    assert evaluation.info.status == "FINISHED"


def test_server_killed_and_restarted_mid_training_loses_no_metric(
    shapes_data: Path,
    reference,
    mlflow_server: MlflowServer,
    tmp_path: Path,
) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _training(shapes_data, run_dir, mlflow_server), cwd=REPO, env=ENV, stdout=out, stderr=out
        )
        try:
            _wait_epoch(proc, run_dir, 1, log)
            mlflow_server.kill()
            _wait_epoch(proc, run_dir, 2, log)  # a whole epoch logged into a dead server
            os.kill(proc.pid, signal.SIGSTOP)  # hold training while the server restarts (~20 s)
            try:
                mlflow_server.start()
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            proc.wait(timeout=600)
        finally:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "best.pt").is_file()
    assert text.count("warning: MLflow") == 1, text[-3000:]  # one line at the outage, no sync line
    assert SYNC not in text and "Traceback" not in text

    from mlflow.tracking import MlflowClient

    run_id = read_spool(run_dir / SPOOL_NAME).run_id
    assert MlflowClient(tracking_uri=mlflow_server.uri).get_run(run_id).info.status == "FINISHED"
    got = metric_histories(mlflow_server.uri, run_id, with_time=True)
    assert got == _spooled_histories(run_dir)  # same steps, values and timestamps as logged
    assert _without_time(got) == _without_time(
        metric_histories(mlflow_server.uri, reference[1])
    )  # = no outage


def test_hung_then_dead_server_training_finishes_and_sync_uploads_everything(
    shapes_data: Path,
    reference,
    mlflow_server: MlflowServer,
    tmp_path: Path,
) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _training(shapes_data, run_dir, mlflow_server), cwd=REPO, env=ENV, stdout=out, stderr=out
        )
        try:
            _wait_epoch(proc, run_dir, 1, log)
            mlflow_server.pause()  # hung: connections are accepted, nothing answers
            proc.wait(timeout=600)
        finally:
            proc.kill()
            mlflow_server.kill()  # it never comes back while the run lasts
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert all((run_dir / name).is_file() for name in ("last.pt", "best.pt", "metrics.json"))
    assert f"{SYNC} {run_dir}" in text and "Traceback" not in text
    assert read_spool(run_dir / SPOOL_NAME).pending

    mlflow_server.start()
    sync = [sys.executable, "-m", "captioner.tracking", "sync", str(run_dir)]
    first = subprocess.run(sync, cwd=REPO, env=ENV, capture_output=True, text=True)
    # MLflow itself prints "View run ... at: <url>" when the run is closed; our summary comes last
    assert first.returncode == 0 and first.stdout.splitlines()[-1].startswith("sent "), first.stderr[-3000:]
    run_id = read_spool(run_dir / SPOOL_NAME).run_id
    got = metric_histories(mlflow_server.uri, run_id, with_time=True)
    assert got == _spooled_histories(run_dir)
    assert _without_time(got) == _without_time(metric_histories(mlflow_server.uri, reference[1]))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.json", "metrics.json"}

    again = subprocess.run(sync, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.startswith("nothing to sync"), again.stdout
    assert metric_histories(mlflow_server.uri, run_id, with_time=True) == got  # no duplicates


def test_stopped_server_never_blocks_a_log_call(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    tracker = build_tracker(True, mlflow_server.uri, "hang", "hang", {"a": 1}, run_dir=tmp_path)
    assert tracker.run_id is not None
    mlflow_server.pause()
    try:
        slowest = 0.0
        for step in range(40):
            started = time.perf_counter()
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            if step % 10 == 0:
                tracker.log_artifact(tmp_path / SPOOL_NAME)
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.05)
        started = time.perf_counter()
        tracker.finish()
        closing = time.perf_counter() - started
    finally:
        mlflow_server.resume()
    assert slowest < 0.5, f"a log call blocked {slowest:.2f} s on a stopped server"
    assert closing < FINISH_GRACE_S + 2.5, f"finish() took {closing:.1f} s on a stopped server"
    from captioner.tracking.__main__ import sync

    assert sync(tmp_path).startswith("sent ")
    history = metric_histories(mlflow_server.uri, tracker.run_id)["loss"]
    assert history == [(step, 1.0 / (step + 1)) for step in range(40)]
