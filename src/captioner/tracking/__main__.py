"""Send a run's unsent tracking records to MLflow: ``python -m captioner.tracking sync <run_dir>``.

Safe to run any number of times: records MLflow already has are skipped (acks in the spool, run
found again by its key, metrics with their original timestamps). If the server was down for the
whole run, sync creates the run, with its original start time, name, tags and params.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from captioner.errors import CaptionerError, ConfigError
from captioner.tracking.sender import Sender, first_line, is_permanent, take_batch
from captioner.tracking.spool import SPOOL_NAME, Spool, read_spool

SYNC_ATTEMPTS, SYNC_RETRY_PAUSE_S = 3, 2.0  # tries per record before "run this sync again"


class SyncError(CaptionerError):
    """MLflow still does not take the records; the spool keeps them for the next sync."""


def sync(target: Path, tracking_uri: str | None = None) -> str:
    """Send the unsent records of ``target`` (a run folder or its spool file); returns a summary line."""
    path = target if target.is_file() else target / SPOOL_NAME
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; pass a run folder trained with logger=mlflow")
    state = read_spool(path)
    if state.start is None:
        raise ConfigError(f"{path} has no run start record; it is not a captioner tracking spool")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or state.start["uri"]
    if "***" in uri:
        raise ConfigError(
            f"the spool holds {uri} with its password masked; pass --tracking-uri with the password"
        )
    if not state.pending:
        return f"nothing to sync: MLflow run {state.run_id} at {uri} has every record of {path}"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # we say "rerun sync"; no silent minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    sender = Sender(uri, path.parent, run_id=state.run_id)
    spool = Spool(path)
    pending = state.pending
    failures = 0
    while pending:
        batch = take_batch(pending)
        try:
            sender.send(batch)
        except Exception as err:  # noqa: BLE001 - whatever MLflow or the network raises
            if not is_permanent(err):
                failures += 1
                if failures < SYNC_ATTEMPTS:  # a server just back from a hang can fail the first requests
                    time.sleep(SYNC_RETRY_PAUSE_S)
                    continue
                raise SyncError(
                    f"MLflow at {uri} failed ({first_line(err)}); {len(pending)} records are still in "
                    f"{path}; run this sync again when it answers"
                ) from err
            print(
                f"warning: MLflow refused a {batch[0]['op']} record ({first_line(err)}); skipped",
                file=sys.stderr,
            )
        failures = 0
        if batch[0]["op"] == "start" and sender.run_id:
            spool.note_run(sender.run_id)
        spool.ack(batch[-1]["seq"])
        pending = pending[len(batch) :]
    summary = f"sent {len(state.pending)} records to MLflow run {sender.run_id} at {uri}"
    if not state.ended:
        summary += (
            " (the spool has no end record: the run's process was killed; it stays RUNNING, or KILLED where"
            " a sweep closed it, until resumed)"
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: ``sync RUN_DIR [--tracking-uri URI]``."""
    parser = argparse.ArgumentParser(prog="python -m captioner.tracking", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("sync", help="send a run folder's unsent tracking records to MLflow")
    cmd.add_argument("run_dir", type=Path, help=f"a run folder (or its {SPOOL_NAME})")
    cmd.add_argument(
        "--tracking-uri", help="where to send (default: MLFLOW_TRACKING_URI, else the run's own)"
    )
    args = parser.parse_args(argv)
    try:
        print(sync(args.run_dir, args.tracking_uri))
    except SyncError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
