"""MLflow tracking: flat params, one run per training, resume into the same run, fail fast when unreachable."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.errors import ConfigError
from captioner.tracking import NullTracker, build_tracker, flatten


def test_flatten_nested_config() -> None:
    nested = {"trainer": {"epochs": 2, "early_stop": {"metric": "bleu4"}}, "seed": 0, "tags": {}}
    assert flatten(nested) == {"trainer.epochs": 2, "trainer.early_stop.metric": "bleu4", "seed": 0}
    assert flatten({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}  # lists stay values


def test_disabled_tracker_does_nothing() -> None:
    tracker = build_tracker(False, "http://127.0.0.1:9", "exp", None, {"a": 1})
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.finish()


@pytest.mark.slow  # creating an MLflow SQLite store runs its migrations (seconds)
def test_run_logs_params_metrics_and_resumes_into_the_same_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"trainer": {"epochs": 2}, "encoder": {"arch": "resnet18"}}
    tracker = build_tracker(True, uri, "shapes", "first", params, tags={"version": "v17"})
    tracker.log_metrics({"val.bleu4": 0.5, "skipped": None}, step=3)
    tracker.finish("KILLED")
    again = build_tracker(True, uri, "shapes", "first", params, run_id=tracker.run_id)
    again.log_metrics({"val.bleu4": 0.7}, step=6)
    again.finish()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params == {"trainer.epochs": "2", "encoder.arch": "resnet18"}
    assert run.data.tags["version"] == "v17"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val.bleu4")] == [
        (3, 0.5),
        (6, 0.7),
    ]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_unreachable_server_is_a_config_error_before_any_run() -> None:
    with pytest.raises(ConfigError, match=r"'http://127.0.0.1:9' cannot be reached.*logger=none"):
        build_tracker(True, "http://127.0.0.1:9", "exp", None, {"a": 1})
