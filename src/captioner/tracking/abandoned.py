"""Close the MLflow run of a process that died without closing it (a sweep trial's killed worker)."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.errors import ConfigError
from captioner.tracking.sender import Sender
from captioner.tracking.spool import SPOOL_NAME, read_spool

KILLED_REASON_TAG = "killed.reason"


def kill_abandoned_run(run_dir: Path, reason: str) -> str | None:
    """Mark KILLED, tagged with ``reason``, the MLflow run that ``run_dir``'s spool names if it is still
    RUNNING; returns its id, or None when there is none to close (no spool, never created, or ended).

    The spool is left as it is: records the process never sent go to the same run on a resume or a sync.
    """
    path = run_dir / SPOOL_NAME
    if not path.is_file():
        return None
    state = read_spool(path)
    run_id = state.run_id or (state.start or {}).get("run_id")
    if state.start is None or run_id is None or state.ended:  # an end record: the process closed it itself
        return None
    uri = state.start["uri"]
    if "***" in uri:  # the spool holds the URI with its password masked
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ConfigError(
                f"{path} holds its MLflow URI with the password masked; set MLFLOW_TRACKING_URI to close run {run_id}"
            )
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead server must not hold up a sweep
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = Sender(uri, run_dir, run_id=run_id).client
    if client.get_run(run_id).info.status != "RUNNING":
        return None
    client.set_tag(run_id, KILLED_REASON_TAG, reason)
    client.set_terminated(run_id, status="KILLED")
    return run_id
