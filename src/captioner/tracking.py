"""MLflow tracking: one run per training, flattened params, step metrics, artifacts; sweeps nest runs.

The default store is local and embedded (a SQLite file), so the UI (`make ui`) works with no server.
Under an Optuna sweep (our sweeper sets CAPTIONER_SWEEP_STUDY / CAPTIONER_SWEEP_TRIAL), each trial's
run is a child of one parent run per study, tagged with the study and trial number.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captioner.errors import ConfigError

SWEEP_STUDY_ENV, SWEEP_TRIAL_ENV = "CAPTIONER_SWEEP_STUDY", "CAPTIONER_SWEEP_TRIAL"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class NullTracker:
    """Does nothing: for logger=none and for ranks other than 0."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Ignore metrics."""

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Ignore artifacts."""

    def log_dict(self, obj: Any, name: str) -> None:
        """Ignore dicts."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Ignore tags."""

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing to close."""


class MlflowTracker(NullTracker):
    """One MLflow run; created only after the tracking store answered (no half-made runs)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        except Exception as err:  # noqa: BLE001 - any store failure is the same user problem
            raise ConfigError(
                f"MLflow tracking store {tracking_uri!r} cannot be reached ({str(err).splitlines()[0][:120]}); "
                "start the server or set logger.tracking_uri (default sqlite:///mlflow.db), or logger=none"
            ) from err
        if run_id is not None:  # resuming: keep logging into the same run
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        all_tags = dict(tags or {})
        study, trial = os.environ.get(SWEEP_STUDY_ENV), os.environ.get(SWEEP_TRIAL_ENV)
        if study:
            all_tags["mlflow.parentRunId"] = self._parent_run(exp_id, study)
            all_tags.update({"sweep.study": study, "sweep.trial": str(trial)})
        if run_name is None:  # MLflow's random names repeat once the loop has seeded `random`
            version = all_tags.get("seed_version")
            run_name = f"{version or 'trial'}-t{trial}" if study else time.strftime("run-%Y%m%d-%H%M%S")
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        params = {k: str(v)[:6000] for k, v in flatten(params).items()}
        items = list(params.items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])

    def _parent_run(self, exp_id: str, study: str) -> str:
        """The study's parent run, created by the first trial that needs it."""
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`sweep.parent` = '{study}'", max_results=1
        )
        if found:
            return found[0].info.run_id
        parent = self.client.create_run(exp_id, run_name=f"study:{study}", tags={"sweep.parent": study})
        self.client.set_terminated(parent.info.run_id)
        return parent.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Upload a file as an artifact."""
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_dict(self, obj: Any, name: str) -> None:
        """Upload ``obj`` as a JSON (or YAML text) artifact named ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
            self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (e.g. the seed's version id for an ablation)."""
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status=status)


def build_tracker(
    enabled: bool,
    tracking_uri: str,
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> NullTracker:
    """An MLflow tracker, or a null one when logging is off (the ``logger`` group maps here)."""
    if not enabled:
        return NullTracker()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast on a dead server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return MlflowTracker(tracking_uri, experiment, run_name, params, tags, run_id)
