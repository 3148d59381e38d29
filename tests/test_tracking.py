"""MLflow tracking: flat params, one run per training, resume into the same run, a spool that survives outages.

Faults against a real server are in test_tracking_faults.py; here the server is a closed port or a
local SQLite store.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import free_port

from captioner.errors import ConfigError
from captioner.tracking import SPOOL_NAME, NullTracker, build_tracker, flatten, read_spool, tracker
from captioner.tracking.__main__ import sync
from captioner.tracking.provenance import Provenance, mask_passwords

REPO = Path(__file__).resolve().parents[1]


def test_flatten_nested_config() -> None:
    nested = {"trainer": {"epochs": 2, "early_stop": {"metric": "bleu4"}}, "seed": 0, "tags": {}}
    assert flatten(nested) == {"trainer.epochs": 2, "trainer.early_stop.metric": "bleu4", "seed": 0}
    assert flatten({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}  # lists stay values


def test_disabled_tracker_does_nothing(tmp_path: Path) -> None:
    tracker = build_tracker(False, "http://127.0.0.1:9", "exp", None, {"a": 1}, run_dir=tmp_path)
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.finish()
    assert not (tmp_path / SPOOL_NAME).exists()


def test_run_names_and_tags_come_from_the_config_and_git() -> None:
    origin = Provenance(
        commit="025df5096d3c", dirty=True, command="python train.py", overrides=["version=v42"]
    )
    assert origin.run_name(1, version="v42") == "v42-s1-025df50"
    assert Provenance(commit="025df50", choices={"experiment": "quality"}).run_name(0) == "quality-s0-025df50"
    assert Provenance().run_name(None) == "train"
    tags = origin.tags()
    assert tags["mlflow.source.git.commit"] == "025df5096d3c" and tags["git.dirty"] == "true"
    assert tags["overrides"] == "version=v42" and tags["command"] == "python train.py"


def test_passwords_in_urls_are_masked() -> None:
    line = "train.py hydra.sweeper.storage=postgresql://me:s3cr,et@db:5432/optuna x=http://a@b"
    assert (
        mask_passwords(line)
        == "train.py hydra.sweeper.storage=postgresql://me:***@db:5432/optuna x=http://a@b"
    )


def test_sweep_parent_is_named_by_group_and_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracker.SWEEP_STUDY_ENV, raising=False)
    assert tracker._sweep_parent({"sweep": "teacher_forcing"}) is None  # not under our sweeper
    monkeypatch.setenv(tracker.SWEEP_STUDY_ENV, "train-923d0b3c")
    parent = tracker._sweep_parent({"sweep": "teacher_forcing", "scale": "cpu"})
    assert parent["name"] == "teacher_forcing-cpu"
    assert parent["tags"] == {
        "sweep.study": "train-923d0b3c",
        "sweep.group": "teacher_forcing",
        "sweep.scale": "cpu",
    }
    assert tracker._sweep_parent({})["name"] == "study:train-923d0b3c"


def test_spool_skips_a_torn_last_line_and_knows_what_is_unsent(tmp_path: Path) -> None:
    from captioner.tracking.spool import Spool

    spool = Spool(tmp_path / SPOOL_NAME)
    for step in range(3):
        spool.append({"op": "metrics", "metrics": [["loss", 1.0, 1000 + step, step]]})
    spool.ack(0)
    with spool.path.open("a") as f:
        f.write('{"seq":3,"op":"metr')  # the process died mid-write
    state = read_spool(spool.path)
    assert [r["seq"] for r in state.pending] == [1, 2] and state.next_seq == 3
    assert Spool(spool.path).append({"op": "end", "status": "KILLED", "time": 0})["seq"] == 3


def _dead_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs
) -> tuple[tracker.MlflowTracker, str]:
    monkeypatch.setattr(tracker, "FINISH_GRACE_S", 1.0)
    uri = f"http://127.0.0.1:{free_port()}"
    params = {"trainer": {"seed": 3, "epochs": 2}}
    tags = {"seed_version": "v42", "seed_bleu4": "21.79", "seed_flags": "--x"}
    return build_tracker(True, uri, "dead", None, params, tags=tags, run_dir=tmp_path / "run", **kwargs), uri


def test_dead_server_costs_training_nothing_and_every_record_is_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import mlflow.entities  # noqa: F401 - imported before timing: the import is not what we measure
    import mlflow.tracking  # noqa: F401

    started = time.perf_counter()
    tracker_, uri = _dead_tracker(tmp_path, monkeypatch)
    assert time.perf_counter() - started < 5.0 and tracker_.run_id is None  # git + one refused request
    slowest = 0.0
    for step in range(200):
        t = time.perf_counter()
        tracker_.log_metrics({"loss": 1.0 / (step + 1), "skipped": None}, step=step)
        slowest = max(slowest, time.perf_counter() - t)
    tracker_.log_artifact(tmp_path / "run" / SPOOL_NAME)
    tracker_.finish("FINISHED")
    assert slowest < 0.05
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # one line at the first failure, one at the end with the sync command
    assert err[0].startswith(f"warning: MLflow at {uri} failed (connection refused)")
    assert err[1].endswith(f"python -m captioner.tracking sync {tmp_path / 'run'}")
    state = read_spool(tmp_path / "run" / SPOOL_NAME)
    assert state.run_id is None and state.ended and state.start["run_name"].startswith("v42-s3")
    ops = [r["op"] for r in state.pending]
    assert ops == ["start", "metrics", *["metrics"] * 200, "artifact", "end"]
    assert state.pending[1]["metrics"][0][:2] == ["seed.bleu4", 21.79]


def test_finish_never_raises_nor_hides_the_first_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    tracker_, _ = _dead_tracker(tmp_path, monkeypatch)

    def broken(record):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tracker_.spool, "append", broken)
    with pytest.raises(ValueError, match="first"):
        try:
            raise ValueError("first")
        finally:
            tracker_.finish("FAILED")
    assert "closing the MLflow run failed (disk on fire)" in capsys.readouterr().err


@pytest.mark.slow  # a fresh MLflow SQLite store runs its migrations (seconds)
def test_sync_creates_the_run_a_dead_server_never_saw_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    tracker_, _ = _dead_tracker(tmp_path, monkeypatch)
    for step in range(5):
        tracker_.log_metrics({"loss": float(step)}, step=step)
    tracker_.log_artifact(tmp_path / "run" / SPOOL_NAME)
    tracker_.finish("FINISHED")
    start = read_spool(tmp_path / "run" / SPOOL_NAME).start
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    # A server just back from a hang failed sync's first request (a 400 from its HTTP layer): retried.
    from captioner.tracking import __main__ as sync_module
    from captioner.tracking.sender import Sender

    calls = []

    class FlakySender(Sender):  # sync's sender only (the dead tracker's thread may still be retrying)
        def send(self, batch):
            calls.append(batch[0]["op"])
            if len(calls) == 2:
                from mlflow.exceptions import MlflowException

                raise MlflowException("failed with error code 400 != 200. Response body: 'Invalid HTTP'")
            return super().send(batch)

    monkeypatch.setattr(sync_module, "Sender", FlakySender)
    monkeypatch.setattr(sync_module, "SYNC_RETRY_PAUSE_S", 0.0)
    assert sync(tmp_path / "run", uri).startswith("sent 9 records")
    assert calls[1] == calls[2] == "metrics"  # the failed batch was sent again, nothing skipped
    assert sync(tmp_path / "run", uri).startswith("nothing to sync")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dead").experiment_id])
    assert run.info.status == "FINISHED" and run.info.start_time == start["time"]
    assert run.info.run_name == start["run_name"] and run.data.params["trainer.seed"] == "3"
    assert run.data.tags["seed_version"] == "v42" and run.data.metrics["seed.bleu4"] == 21.79
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (s, float(s)) for s in range(5)
    ]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [SPOOL_NAME]


@pytest.mark.slow  # creating an MLflow SQLite store runs its migrations (seconds)
def test_run_logs_params_metrics_and_resumes_into_the_same_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"trainer": {"epochs": 2}, "encoder": {"arch": "resnet18"}}
    run_dir = tmp_path / "run"
    tracker_ = build_tracker(True, uri, "shapes", "first", params, tags={"version": "v17"}, run_dir=run_dir)
    tracker_.log_metrics({"val.bleu4": 0.5, "skipped": None}, step=3)
    tracker_.log_metrics({"val.bleu4": 0.55}, step=4)  # after the checkpoint the resume starts from
    tracker_.finish("KILLED")
    again = build_tracker(True, uri, "shapes", "second", params, run_dir=run_dir, resume=True)
    assert again.run_id == tracker_.run_id
    again.log_metrics({"val.bleu4": 0.6}, step=4)  # the resumed run repeats step 4: MLflow has it already
    again.log_metrics({"val.bleu4": 0.7}, step=6)
    again.finish()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker_.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params == {"trainer.epochs": "2", "encoder.arch": "resnet18"}
    assert run.data.tags["version"] == "v17"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val.bleu4")] == [
        (3, 0.5),
        (4, 0.55),
        (6, 0.7),
    ]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # model-training view
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_broken_store_is_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database, left by a crash" * 100)
    with pytest.raises(ConfigError) as err:
        build_tracker(True, f"sqlite:///{db}", "exp", None, {"a": 1}, run_dir=tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message and str(db) in message and f"mv {db} {db}.broken" in message
    assert db.read_bytes().startswith(b"not a database")  # nothing of the user's is overwritten


WORKER = """
import sys, time
from pathlib import Path
from captioner.tracking import build_tracker
root, name, reps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for rep in range(reps):
    while not (root / f"go-{rep}").exists():
        time.sleep(0.005)
    try:
        t = build_tracker(True, f"sqlite:///{root / str(rep) / 'mlflow.db'}", "race", name, {"a": 1},
                          run_dir=root / str(rep) / name)
        t.log_metrics({"x": 1.0}, step=0)
        t.finish()
        result = t.run_id or "no run"
    except BaseException as err:
        result = f"error: {err!r}"
    (root / f"done-{rep}-{name}").write_text(result)
"""


@pytest.mark.slow  # ten fresh stores, each migrated once (~1-3 s each)
def test_two_processes_on_a_fresh_sqlite_store_both_succeed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    reps, names = 10, ("a", "b")
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), name, str(reps)], cwd=REPO)
        for name in names
    ]
    try:
        for rep in range(reps):
            (tmp_path / f"go-{rep}").touch()  # both workers open the fresh store at the same moment
            deadline = time.monotonic() + 120
            while not all((tmp_path / f"done-{rep}-{n}").exists() for n in names):
                assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
                time.sleep(0.05)
            results = [(tmp_path / f"done-{rep}-{n}").read_text() for n in names]
            assert not any(r.startswith(("error", "no run")) for r in results), (rep, results)
            client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / str(rep) / 'mlflow.db'}")
            runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
            assert sorted(r.info.run_name for r in runs) == list(names)
    finally:
        for w in workers:
            w.kill()
            w.wait()


@pytest.mark.slow  # a fresh MLflow SQLite store runs its migrations (seconds)
def test_sweep_trials_are_children_of_one_parent_named_by_group_and_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from captioner.tracking import provenance

    choices = {"sweep": "teacher_forcing", "scale": "cpu", "version": "v42"}
    monkeypatch.setattr(provenance, "collect", lambda: Provenance(commit="025df5096d3c", choices=choices))
    monkeypatch.setenv(tracker.SWEEP_STUDY_ENV, "train-923d0b3c")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for trial in (0, 1):
        monkeypatch.setenv(tracker.SWEEP_TRIAL_ENV, str(trial))
        params = {"trainer": {"seed": trial}}
        build_tracker(
            True, uri, "sweep-teacher_forcing-cpu", None, params, run_dir=tmp_path / str(trial)
        ).finish()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-teacher_forcing-cpu").experiment_id])
    (parent,) = [r for r in runs if "sweep.parent" in r.data.tags]
    assert parent.info.run_name == "teacher_forcing-cpu"
    assert parent.data.tags["sweep.group"] == "teacher_forcing" and parent.data.tags["sweep.scale"] == "cpu"
    children = sorted((r for r in runs if r is not parent), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in children] == ["v42-s0-025df50", "v42-s1-025df50"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert [r.data.tags["sweep.trial"] for r in children] == ["0", "1"]


def test_transport_errors_and_write_conflicts_are_retried_and_a_real_refusal_is_not() -> None:
    """Only MLflow's own refusal of a record drops it. A hung server's HTTP layer answered 400 "Invalid
    HTTP request received." to a request cut off by the client's timeout; dropping that batch lost ten
    metrics in CI. A SQL store answers 400 to two requests racing on the same rows: a race too."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from captioner.tracking.sender import PermanentError, is_permanent

    cut = (
        "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 400 != 200. "
        "Response body: 'Invalid HTTP request received.'"
    )
    assert not is_permanent(MlflowException(cut, error_code=BAD_REQUEST))
    refused = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Param value too long"})
    assert is_permanent(refused)
    race = "(sqlite3.IntegrityError) UNIQUE constraint failed: metrics.key, metrics.timestamp"
    assert not is_permanent(MlflowException(race, error_code=BAD_REQUEST))
    pg = "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint"
    assert not is_permanent(MlflowException(pg, error_code=BAD_REQUEST))
    assert not is_permanent(MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE))  # 503
    assert is_permanent(MlflowException("Param value too long", error_code=INVALID_PARAMETER_VALUE))
    assert is_permanent(PermanentError("artifact gone")) and not is_permanent(TimeoutError("timed out"))
