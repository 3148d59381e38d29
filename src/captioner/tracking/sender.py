"""Send spool records to MLflow with ``MlflowClient``; any record can be sent twice without a duplicate.

A run is found again by its ``captioner.run_key`` tag before one is created, params and tags are
idempotent, and metrics keep their original timestamps (the SQL stores drop an exact repeat).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioner.errors import ConfigError

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3 UI: model-training view
RUN_KEY_TAG = "captioner.run_key"
METRICS_PER_BATCH, ITEMS_PER_BATCH = 1000, 100  # MLflow's log_batch limits


class PermanentError(Exception):
    """A record MLflow will never take (a file gone, a value refused): it is dropped with a warning."""


# Answers that look like refusals but are not about the record, so a retry can succeed:
# - a 400 without MLflow's JSON error body: the HTTP layer, not MLflow, rejected the bytes (uvicorn's
#   "Invalid HTTP request received." for a request cut off by a client timeout while the server was
#   hung; treating it as a refusal dropped ten metrics in CI);
# - a SQL store's 400 for two requests writing the same rows at once (a timed-out request the server
#   still finishes, beside its resend or a sync): retried, the store keeps what is there, adds the rest.
_NOT_ABOUT_THE_RECORD = ("Response body:", "IntegrityError", "UNIQUE constraint", "UniqueViolation")


def is_permanent(err: BaseException) -> bool:
    """MLflow's own 4xx answer (bad request, gone) will not change by retrying; timeouts, 5xx, I/O
    errors, 4xx from the HTTP layer and write conflicts between concurrent requests may."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, PermanentError):
        return True
    if isinstance(err, MlflowException):
        if any(needle in str(err) for needle in _NOT_ABOUT_THE_RECORD):
            return False
        code = err.get_http_status_code()
        return 400 <= code < 500 and code not in (408, 429)
    return False


_NETWORK_REASONS = {
    "Connection refused": "connection refused",
    "timed out": "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT",
    "Name or service not known": "unknown host",
    "Connection reset": "connection reset",
}


def first_line(err: BaseException) -> str:
    """A short reason: the network failure in a few words, else the first line of the error's text."""
    text = str(err)
    for needle, reason in _NETWORK_REASONS.items():
        if needle in text:
            return reason
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def prepare_local_store(tracking_uri: str) -> None:
    """Create or upgrade a local SQLite store once, under a file lock, before any use.

    MLflow migrates a fresh SQLite file on first open with no lock, so two processes starting
    together (sweep workers, joblib) race in alembic and can leave the file broken.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    from filelock import FileLock
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = Path(tracking_uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=600):
        try:
            SqlAlchemyStore(tracking_uri, default_artifact_root=str(path.parent / "mlruns"))
        except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the fix is the same
            raise ConfigError(
                f"MLflow store {path} cannot be opened ({first_line(err)}); move it aside "
                f"(mv {path} {path}.broken) to start a fresh one, or set logger.tracking_uri"
            ) from err


def take_batch(pending: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The head record, or the run of consecutive metrics records that fits in one log_batch."""
    batch, n = [pending[0]], len(pending[0].get("metrics", ()))
    if pending[0]["op"] == "metrics":
        for record in pending[1:]:
            if record["op"] != "metrics" or n + len(record["metrics"]) > METRICS_PER_BATCH:
                break
            batch.append(record)
            n += len(record["metrics"])
    return batch


class Sender:
    """Applies records to one MLflow run; ``run_id`` is known once the start record went through."""

    def __init__(self, tracking_uri: str, run_dir: Path, run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        prepare_local_store(tracking_uri)
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
        except Exception as err:  # noqa: BLE001 - an unsupported URI scheme and the like
            raise ConfigError(
                f"logger.tracking_uri={tracking_uri!r} is not an MLflow store ({first_line(err)}); "
                "use sqlite:///mlflow.db, http://host:port, or logger=none"
            ) from err
        self.run_dir = run_dir
        self.run_id = run_id

    def send(self, batch: Sequence[dict[str, Any]]) -> None:
        """Apply ``batch`` (from ``take_batch``); raises on failure, having changed nothing not idempotent."""
        op = batch[0]["op"]
        if op == "start":
            self._start(batch[0])
            return
        if self.run_id is None:
            raise PermanentError(f"no MLflow run to send {op!r} to (the spool has no start record)")
        if op == "metrics":
            from mlflow.entities import Metric

            metrics = [Metric(k, v, ts, step) for r in batch for k, v, ts, step in r["metrics"]]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif op == "artifact":
            path = Path(batch[0]["path"])
            path = path if path.is_absolute() else self.run_dir / path
            if not path.is_file():
                raise PermanentError(f"artifact {path} no longer exists")
            self.client.log_artifact(self.run_id, str(path), artifact_path=batch[0].get("folder"))
        elif op == "tags":
            self._log_tags(self.run_id, batch[0]["tags"])
        elif op == "resume":
            self.client.update_run(self.run_id, status="RUNNING")
        elif op == "end":
            self.client.set_terminated(self.run_id, status=batch[0]["status"], end_time=batch[0]["time"])
        else:
            raise PermanentError(f"unknown spool record {op!r}")

    def _start(self, record: dict[str, Any]) -> None:
        """Find or create the run (and the sweep's parent run), then log its params."""
        if record.get("run_id"):  # resuming a run that was created before this spool existed
            self.run_id = record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        from mlflow.entities import Param, ViewType

        exp_id = self._experiment(record["experiment"])
        found = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{record['key']}'",
            run_view_type=ViewType.ALL,
            max_results=1,
        )
        if found:  # an earlier attempt created it and then failed, or timed out on the way back
            run_id = found[0].info.run_id
        else:
            tags = {**record["tags"], RUN_KEY_TAG: record["key"]}
            if record.get("parent"):
                tags["mlflow.parentRunId"] = self._parent(exp_id, record["parent"])
            run = self.client.create_run(
                exp_id, start_time=record["time"], tags=tags, run_name=record["run_name"]
            )
            run_id = run.info.run_id
        items = list(record["params"].items())
        for i in range(0, len(items), ITEMS_PER_BATCH):
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + ITEMS_PER_BATCH]])
        self.run_id = run_id

    def _experiment(self, name: str) -> str:
        """The experiment's id, created in the model-training view if it does not exist."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
            except MlflowException:  # another process created it between our two calls
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if EXPERIMENT_KIND[0] not in exp.tags:
            self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id

    def _parent(self, exp_id: str, parent: dict[str, Any]) -> str:
        """The sweep's parent run, created by the first trial that needs it."""
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`sweep.parent` = '{parent['study']}'", max_results=1
        )
        if found:
            return found[0].info.run_id
        tags = {"sweep.parent": parent["study"], **parent["tags"]}
        run = self.client.create_run(exp_id, run_name=parent["name"], tags=tags)
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def _log_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = list(tags.items())
        for i in range(0, len(items), ITEMS_PER_BATCH):
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in items[i : i + ITEMS_PER_BATCH]])
