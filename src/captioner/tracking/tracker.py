"""The tracker training and evaluation log through: it never blocks a step and never raises.

Every record (run start, params, metrics, artifacts, end status) is first appended to the run
folder's spool, then sent to MLflow by a background thread. When MLflow is down or hung, the thread
warns once, keeps the records and retries with a growing pause; when it answers again, the records
go in their original order with their original steps and timestamps, so the run's history is the
same as without the outage. ``finish`` waits a few seconds for the backlog; what is still unsent
then stays in the spool, and one line says how to send it: ``python -m captioner.tracking sync``.

Why not MLflow's own ``log_batch(..., synchronous=False)``: its queue lives in memory only, a batch
that fails is logged as an error and dropped (no retry, no replay, lost on a crash), and run
creation, artifacts and ``set_terminated`` stay synchronous, so a dead server still kills training.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from captioner.tracking.sender import METRICS_PER_BATCH, Sender, first_line, is_permanent, take_batch
from captioner.tracking.spool import SPOOL_NAME, Spool, read_spool

T = TypeVar("T")

SWEEP_STUDY_ENV, SWEEP_TRIAL_ENV = "CAPTIONER_SWEEP_STUDY", "CAPTIONER_SWEEP_TRIAL"  # set by our sweeper
RETRY_PAUSES_S = (2.0, 4.0, 8.0, 15.0, 30.0)  # pause before the 1st, 2nd, ... retry of a failing server
FINISH_GRACE_S = 5.0  # how long finish() waits for a server that makes no progress
MAX_PENDING = 10_000  # records kept in memory; beyond that they are read back from the spool


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


def warn(message: str) -> None:
    """One line on stderr (training's own output stays on stdout)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class NullTracker:
    """Does nothing: for logger=none and for ranks other than 0."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Ignore metrics."""

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Ignore artifacts."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Ignore tags."""

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing to close."""


class MlflowTracker(NullTracker):
    """One MLflow run fed from the spool in ``run_dir`` by a background sender thread."""

    def __init__(self, tracking_uri: str, run_dir: Path, start: dict[str, Any] | None, resume: bool):
        """Open the spool (continuing it on ``resume``), try to send once, then hand over to the thread.

        ``start`` is the run's start record (experiment, name, tags, params); on a resume whose run
        folder has a spool, that spool's own start record is used instead.
        """
        self.uri, self.run_dir = tracking_uri, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / SPOOL_NAME
        state = read_spool(path) if resume and path.exists() else None
        if state is None and path.exists():
            _set_aside(path)
        self.spool = Spool(path)
        self.sender = Sender(tracking_uri, run_dir, run_id=state.run_id if state else None)
        self._cond = threading.Condition()
        self._pending: deque[dict[str, Any]] = deque()
        self._overflow = False  # some pending records are only in the spool file
        self._spool_failed = False  # the spool could not be written (said once)
        self._failures = 0  # consecutive failed attempts (0: the server is answering)
        self._next_try = 0.0
        self._closing = False  # finish() was called: exit once drained
        self._hurry = False  # finish() is waiting: retry every half second
        self._last_progress = time.monotonic()
        # A resumed run repeats the steps between its checkpoint and the kill: MLflow has those already.
        self._last_step = state.last_step if state is not None else {}
        if state is not None:  # records a killed or cut-off process never sent go first
            self._pending.extend(state.pending[:MAX_PENDING])
            self._overflow = len(state.pending) > MAX_PENDING
            self._append({"op": "resume"} if state.start else start)
        else:
            self._append(start)
        # One attempt in the caller's thread, so a healthy store has the run (and its id) right away.
        if self.sender.run_id is None:
            self._drain(until_run=True)
        self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        """The MLflow run id, or None while the run could not be created yet."""
        return self.sender.run_id

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Queue scalar metrics at ``step``, stamped now (a replay keeps this timestamp); on a resume, a
        metric at a step this run already logged it at or past is skipped."""
        now = int(time.time() * 1000)
        batch = [
            [k, float(v), now, int(step)]
            for k, v in metrics.items()
            if v is not None and step > self._last_step.get(k, -1)
        ]
        if batch:
            self._append({"op": "metrics", "metrics": batch})

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Queue a file upload (the file is read when it is sent, so it must stay in place)."""
        path = Path(path).resolve()
        try:  # relative to the run folder, so a moved or copied run folder still syncs
            path = path.relative_to(self.run_dir.resolve())
        except ValueError:
            pass
        self._append({"op": "artifact", "path": str(path), "folder": folder})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Queue run tags."""
        self._append({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED); never raises, waits a few seconds at most
        for a server that makes no progress, and says how to sync what it could not send."""
        try:
            self._append({"op": "end", "status": status, "time": int(time.time() * 1000)})
            with self._cond:
                self._closing, self._hurry, self._next_try = True, True, 0.0
                self._last_progress = time.monotonic()
                self._cond.notify()
            while self._thread.is_alive() and time.monotonic() - self._last_progress < FINISH_GRACE_S:
                self._thread.join(timeout=0.1)
            if self._thread.is_alive():
                with self._cond:  # keep trying in the background at the normal pace (a sweep goes on)
                    self._hurry = False
                left = len(read_spool(self.spool.path).pending)
                warn(
                    f"MLflow at {self.uri} did not take {left} tracking records; they are kept in "
                    f"{self.spool.path}; send them later with: python -m captioner.tracking sync {self.run_dir}"
                )
        except BaseException as err:  # noqa: BLE001 - a tracker must never replace training's own error
            warn(f"closing the MLflow run failed ({first_line(err)}); records are kept in {self.spool.path}")

    def _append(self, record: dict[str, Any]) -> None:
        """Write a record to the spool and queue it for the sender (never blocks on the network)."""
        spooled = self._to_spool(lambda: self.spool.append(record))
        record = spooled if spooled is not None else {"seq": -1, **record}  # sent from memory only
        with self._cond:
            if self._overflow or len(self._pending) >= MAX_PENDING:
                self._overflow = True
            else:
                self._pending.append(record)
            self._cond.notify()

    def _run(self) -> None:
        """Sender thread: send pending records, pause after failures, exit once closed and drained."""
        while True:
            with self._cond:
                while True:
                    if not self._pending and self._overflow:
                        self._reload()
                    if self._closing and not self._pending:
                        return
                    wait = self._next_try - time.monotonic()
                    if self._pending and wait <= 0:
                        break
                    self._cond.wait(timeout=wait if self._pending else None)
            self._drain()

    def _reload(self) -> None:
        """Refill the in-memory queue from the spool file (called with the lock held)."""
        pending = read_spool(self.spool.path).pending
        self._pending.extend(pending[:MAX_PENDING])
        self._overflow = len(pending) > MAX_PENDING

    def _drain(self, until_run: bool = False) -> None:
        """Send records from the head of the queue until it is empty, the server fails, or (``until_run``)
        the run exists."""
        while True:
            with self._cond:
                if not self._pending:
                    return
                batch = take_batch(list(islice(self._pending, METRICS_PER_BATCH)))  # never more records
            try:
                self.sender.send(batch)
            except Exception as err:  # noqa: BLE001 - whatever MLflow or the network raises
                if not is_permanent(err):
                    self._failed(err)
                    return
                warn(f"MLflow refused a {batch[0]['op']} record ({first_line(err)}); it is skipped")
            self._sent(batch)
            if until_run and self.sender.run_id is not None:
                return

    def _sent(self, batch: list[dict[str, Any]]) -> None:
        seq = batch[-1]["seq"]
        if batch[0]["op"] == "start" and self.sender.run_id:
            self._to_spool(lambda: self.spool.note_run(self.sender.run_id))
        if seq >= 0:
            self._to_spool(lambda: self.spool.ack(seq))
        with self._cond:
            for _ in batch:
                self._pending.popleft()
            if self._failures:
                print(f"MLflow at {self.uri} answers again; sending the delayed records", file=sys.stderr)
            self._failures, self._next_try = 0, 0.0
            self._last_progress = time.monotonic()

    def _to_spool(self, write: Callable[[], T]) -> T | None:
        """``write()`` to the spool; a full disk must not stop training: one warning, then None."""
        try:
            return write()
        except OSError as err:
            if not self._spool_failed:
                self._spool_failed = True
                warn(f"cannot write {self.spool.path} ({first_line(err)}); tracking goes on without it")
            return None

    def _failed(self, err: BaseException) -> None:
        with self._cond:
            if self._failures == 0:
                warn(
                    f"MLflow at {self.uri} failed ({first_line(err)}); training goes on, tracking records "
                    f"are kept in {self.spool.path} and resent when it answers"
                )
            pause = 0.5 if self._hurry else RETRY_PAUSES_S[min(self._failures, len(RETRY_PAUSES_S) - 1)]
            self._failures += 1
            self._next_try = time.monotonic() + pause


def _set_aside(path: Path) -> None:
    """A new run in an old run folder: keep the old spool if it still holds unsent records."""
    if not read_spool(path).pending:
        path.unlink()
        return
    aside = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    path.rename(aside)
    warn(
        f"{path} held unsent records of an earlier run; kept as {aside} (sync it with: python -m captioner.tracking sync {aside})"
    )


def build_tracker(
    enabled: bool,
    tracking_uri: str,
    experiment: str,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    *,
    run_dir: str | Path | None = None,
    run_id: str | None = None,
    resume: bool = False,
) -> NullTracker:
    """An MLflow tracker spooling to ``run_dir``, or a null one when logging is off (the ``logger`` group).

    The run is named from the config when ``run_name`` is None (``v42-s1-025df50``) and carries its
    provenance (git commit, command, Hydra overrides). Under our Optuna sweeper it is a child of the
    study's parent run, named by sweep group and scale. ``resume`` continues the run of ``run_dir``'s
    spool, or ``run_id`` for a run folder from before spools.
    """
    if not enabled:
        return NullTracker()
    from captioner.tracking import provenance

    # A dead server must cost ~1 s per attempt, in the sender thread; we retry ourselves, paced.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    origin = provenance.collect()
    parent = _sweep_parent(origin.choices)
    all_tags = {**origin.tags(), **(tags or {})}
    if parent is not None:
        all_tags |= {**parent["tags"], "sweep.trial": os.environ.get(SWEEP_TRIAL_ENV, "")}
    trainer = params.get("trainer")
    seed = trainer.get("seed") if isinstance(trainer, Mapping) else None
    start: dict[str, Any] = {
        "op": "start",
        "uri": provenance.mask_passwords(tracking_uri),
        "experiment": experiment,
        "run_name": run_name or origin.run_name(seed, all_tags.get("seed_version")),
        "tags": {k: str(v) for k, v in all_tags.items()},
        "params": {k: str(v)[:6000] for k, v in flatten(params).items()},
        "key": uuid.uuid4().hex,
        "time": int(time.time() * 1000),
        "run_id": run_id if resume else None,
        "parent": parent,
    }
    tracker = MlflowTracker(tracking_uri, Path(run_dir or "."), start, resume)
    if not resume:  # the seed's reported scores (string tags in sweeps/version/*.yaml) as numbers
        reported = {
            f"seed.{k.removeprefix('seed_')}": _number(v)
            for k, v in all_tags.items()
            if k.startswith("seed_")
        }
        tracker.log_metrics(reported, step=0)
    return tracker


def _sweep_parent(choices: Mapping[str, str]) -> dict[str, Any] | None:
    """The parent run of our Optuna sweeper's study, named ``<group>-<scale>`` (e.g. ``teacher_forcing-cpu``)."""
    study = os.environ.get(SWEEP_STUDY_ENV)
    if not study:
        return None
    group, scale = choices.get("sweep") or choices.get("search"), choices.get("scale")
    tags = (
        {"sweep.study": study}
        | ({"sweep.group": group} if group else {})
        | ({"sweep.scale": scale} if scale else {})
    )
    name = "-".join(p for p in (group, scale) if p) or f"study:{study}"
    return {"study": study, "name": name, "tags": tags}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # "n/a" and the like
        return None
