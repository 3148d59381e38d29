"""The Optuna sweeper against a real PostgreSQL server on loopback: dead workers, storage errors, secrets."""

import signal
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path

import postgres_server
import pytest
from optuna.trial import TrialState
from postgres_server import PASSWORD, Postgres, free_port
from test_sweeper import (
    GRID,
    TRAIN_ENV,
    assert_each_point_complete_once,
    by_state,
    finish,
    load,
    run_sweep,
    start_workers,
    training_sweep_cmd,
)

from hydra_plugins.captioner_optuna_sweeper._impl import RUN_DIR_ATTR
from hydra_plugins.captioner_optuna_sweeper.storage import RETRY_S

REPO = Path(__file__).resolve().parents[1]
# The server fixtures (a session server, a fresh database per test).
postgres, postgres_db = postgres_server.postgres, postgres_server.postgres_db


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run's single `error:` line; fails on a traceback or several errors."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert PASSWORD not in out
    return errors[0]


def test_two_workers_one_killed_each_point_completes_once(tmp_path: Path, postgres_db: str) -> None:
    # Worker 0 is SIGKILLed in its first trial; its heartbeat (1 s, grace 2 s) stops, worker 1
    # fails that trial and runs its point again, resuming the dead trial's folder.
    overrides = (GRID, "x=choice(0,1,2)", "y=choice(-1,0)", "sleep=1.0", "hydra.sweeper.heartbeat_interval=1")
    workers = start_workers(
        tmp_path, 2, *overrides, env={0: {"SWEEPER_APP_KILL_FIRST": "1"}}, storage=postgres_db
    )
    outputs = finish(workers)
    assert [w.returncode for w in workers] == [-signal.SIGKILL, 0], outputs
    study = load(tmp_path, postgres_db)
    complete = assert_each_point_complete_once(study, 6)
    (dead,) = by_state(study, TrialState.FAIL)
    assert "sent no heartbeat for over 2 s" in dead.user_attrs["fail_reason"]
    assert f"trial {dead.number} FAIL worker" in outputs[1]
    (rerun,) = [t for t in complete if t.params == dead.params]
    assert rerun.system_attrs[RUN_DIR_ATTR] == dead.system_attrs[RUN_DIR_ATTR]  # resumed, not restarted


def test_password_is_never_printed_nor_saved(tmp_path: Path, postgres_db: str) -> None:
    # report=true: each task opens the study itself (sweep_trial), so it needs the real URL too.
    proc = run_sweep(tmp_path, GRID, "hydra.sweeper.n_trials=2", "report=true", storage=postgres_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(by_state(load(tmp_path, postgres_db), TrialState.COMPLETE)) == 2
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "optuna:***@127.0.0.1" in proc.stdout + proc.stderr  # the Study line, masked
    saved = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "hydra.yaml" for p in saved)
    for path in saved:
        assert PASSWORD not in path.read_text(errors="replace"), path
    assert "optuna:***@" in (tmp_path / "multirun" / "0" / ".hydra" / "hydra.yaml").read_text()


def test_password_from_the_environment_stays_an_interpolation(tmp_path: Path, postgres_db: str) -> None:
    # What docs/sweeps.md recommends: the saved configs hold ${oc.env:...}, never the secret.
    url = postgres_db.replace(PASSWORD, "${oc.env:CAPTIONER_DB_PASSWORD}")
    proc = run_sweep(
        tmp_path, GRID, "hydra.sweeper.n_trials=1", env={"CAPTIONER_DB_PASSWORD": PASSWORD}, storage=url
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(by_state(load(tmp_path, postgres_db), TrialState.COMPLETE)) == 1
    assert PASSWORD not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*.yaml"):
        assert PASSWORD not in path.read_text(), path


def test_wrong_password_is_one_line_after_one_try(
    tmp_path: Path, postgres: Postgres, postgres_db: str
) -> None:
    url = postgres_db.replace(PASSWORD, "wrong-password")
    start = time.monotonic()
    proc = run_sweep(tmp_path, GRID, storage=url)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(
        f"error: hydra.sweeper.storage postgresql+psycopg2://optuna:***@127.0.0.1:{postgres.port}/"
    )
    assert 'password authentication failed for user "optuna"; check the user and password' in line
    assert "wrong-password" not in proc.stdout + proc.stderr
    assert time.monotonic() - start < RETRY_S  # not retried


def test_missing_database_is_one_line(tmp_path: Path, postgres: Postgres) -> None:
    proc = run_sweep(tmp_path, GRID, storage=postgres.url("no_such_db"))
    assert proc.returncode == 2
    assert 'database "no_such_db" does not exist; create it' in one_error_line(proc)


def test_missing_driver_is_one_line(tmp_path: Path, postgres: Postgres) -> None:
    if find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed: no missing driver to test with")
    proc = run_sweep(tmp_path, GRID, storage=postgres.url("optuna", driver="pg8000"))
    assert proc.returncode == 2
    assert "its database driver pg8000 is not installed; pip install pg8000" in one_error_line(proc)


@pytest.mark.slow  # waits RETRY_S (30 s) for a server that never comes
def test_closed_port_is_retried_for_a_bounded_time_then_one_line(tmp_path: Path, postgres: Postgres) -> None:
    start = time.monotonic()
    proc = run_sweep(tmp_path, GRID, storage=postgres.url("optuna", port=free_port()))
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"failed for {RETRY_S:.0f} s" in line and "Connection refused" in line
    assert "start the database server" in line
    assert RETRY_S - 5 < elapsed < RETRY_S + 120


@pytest.mark.slow  # a real (tiny) training logged to MLflow, ~1 min
def test_password_reaches_no_mlflow_param(tmp_path: Path, postgres_db: str) -> None:
    import mlflow

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    storage, tracking_uri = f"hydra.sweeper.storage='{postgres_db}'", f"logger.tracking_uri={tracking}"
    cmd = training_sweep_cmd(tmp_path, storage, tracking_uri)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=TRAIN_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert PASSWORD not in proc.stdout + proc.stderr
    client = mlflow.MlflowClient(tracking)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert any(r.data.params for r in runs)
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert PASSWORD not in value, key
    for path in tmp_path.rglob("*.yaml"):
        assert PASSWORD not in path.read_text(), path
