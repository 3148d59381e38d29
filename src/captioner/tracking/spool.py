"""The tracking spool: every record a run sends to MLflow, appended to a JSONL file in its run folder.

Training appends a record before it is sent, and the sender appends an ``ack`` once MLflow has it,
so the file alone says what MLflow is missing: after an outage, a crash or a SIGKILL, the records
after the last ack are sent again (``python -m captioner.tracking sync <run_dir>``). Replays are
harmless: records carry their own timestamps and MLflow's SQL stores ignore a metric already stored
with the same key, step, timestamp and value.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPOOL_NAME = "tracking_spool.jsonl"


@dataclass
class SpoolState:
    """What a spool file says: the run's start record, its MLflow id once created, and what is unsent."""

    start: dict[str, Any] | None = None
    run_id: str | None = None
    acked: int = -1  # every record with seq <= acked is in MLflow (or was dropped as invalid)
    next_seq: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False
    last_step: dict[str, int] = field(default_factory=dict)  # per metric, the highest step logged


class Spool:
    """Append-only JSONL log of tracking records; safe to share between the training and sender threads."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._seq = read_spool(path).next_seq if path.exists() else 0

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Number ``record``, write it, and return it (with its ``seq``)."""
        with self._lock:
            record = {"seq": self._seq, **record}
            self._seq += 1
            self._write(record)
        return record

    def ack(self, seq: int) -> None:
        """Every record up to ``seq`` reached MLflow."""
        with self._lock:
            self._write({"op": "ack", "seq": seq})

    def note_run(self, run_id: str) -> None:
        """The MLflow run now exists under ``run_id`` (so a resume or a sync never creates a second one)."""
        with self._lock:
            self._write({"op": "run", "run_id": run_id})

    def _write(self, record: dict[str, Any]) -> None:
        # One write per line and a flush: a killed process loses at most the line being written.
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_spool(path: Path) -> SpoolState:
    """Parse a spool file; a torn last line (the process died mid-write) is skipped."""
    state = SpoolState()
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            op = record.get("op")
            if op == "ack":
                state.acked = max(state.acked, record["seq"])
            elif op == "run":
                state.run_id = record["run_id"]
            else:
                records.append(record)
                state.next_seq = max(state.next_seq, record["seq"] + 1)
                if op == "start" and state.start is None:
                    state.start = record
                for key, _, _, step in record.get("metrics", ()):
                    state.last_step[key] = max(step, state.last_step.get(key, step))
                state.ended = op == "end"
    state.pending = [r for r in records if r["seq"] > state.acked]
    return state


def spooled_run_id(run_dir: Path) -> str | None:
    """The MLflow run id a run folder's spool recorded, if the run was created."""
    path = run_dir / SPOOL_NAME
    return read_spool(path).run_id if path.is_file() else None
