"""Worker liveness: which sweeper processes hold which trials, and failing the trials of dead ones."""

import fcntl
import logging
import os
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

log = logging.getLogger(__name__)

# Trial system attributes written by the sweeper.
WORKER_ATTR = "captioner_worker"  # random id of the sweeper process that holds the trial
INTERRUPTED_ATTR = "captioner_interrupted"  # True: FAIL because its worker died or stopped, not the task
RUN_DIR_ATTR = (
    "captioner_run_dir"  # the folder the task writes to (its own job folder, or the one it resumes)
)


class WorkerLock:
    """A sweeper process's sign of life for workers that share a SQLite file.

    Each worker holds a POSIX lock on `<db>.workers/<worker id>.lock`; the kernel drops it the
    moment the process dies, in whatever PID namespace or container it ran, so another worker
    sees at once that a trial's holder is gone. (A `host:pid` check cannot tell: pids repeat across
    containers with one hostname.) A server database has no shared folder: there Optuna's heartbeat
    is the only sign of life.
    """

    def __init__(self, folder: Path, worker: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{worker}.lock"
        # fcntl (POSIX) locks belong to this process: children forked by the task do not inherit them.
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        """Drop the lock and its file (the worker ends normally)."""
        self.path.unlink(missing_ok=True)
        os.close(self.fd)

    @staticmethod
    def dead(folder: Path, worker: str) -> bool:
        """Whether `worker` surely died: its lock file exists and nobody holds the lock.

        Call it for other workers only: a process never conflicts with its own POSIX locks.
        """
        path = folder / f"{worker}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False  # no lock file (a worker on another host, an older sweeper): the heartbeat decides
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: alive
        finally:
            os.close(fd)  # also drops the lock we may just have taken
        path.unlink(missing_ok=True)
        return True


def lock_folder(url: str | None) -> Path | None:
    """Where workers on the SQLite file `url` keep their locks; None for other storages."""
    if url is None or not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///") + ".workers")


def mark_interrupted(study: optuna.Study, trial_id: int, number: int, reason: str) -> bool:
    """Record RUNNING trial `trial_id` as FAIL because its worker died or stopped; False if it had ended."""
    storage = study._storage
    try:
        # Attributes first: a finished trial accepts none.
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it finished, or another worker failed it first
    log.warning(f"trial {number} FAIL {reason}; its point is free to run again")
    return True


def fail_dead_trials(study: optuna.Study, me: str, locks: Path | None) -> None:
    """Mark RUNNING trials of dead workers FAIL, so that the budget and the grid point come back.

    Dead means: its worker's lock is free (SQLite, caught at once), or its Optuna heartbeat is
    older than the grace period (any storage with heartbeats).
    """
    storage = study._storage
    stale: set[int] = set()
    if is_heartbeat_enabled(storage):
        stale = set(storage._get_stale_trial_ids(study._study_id))
        grace = 2 * storage.get_heartbeat_interval()  # make_storage sets the grace period so
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_ATTR)
        if trial._trial_id in stale:
            reason = f"worker {worker} sent no heartbeat for over {grace} s"
        elif worker and worker != me and locks is not None and WorkerLock.dead(locks, worker):
            reason = f"worker {worker} died"
        else:
            continue
        # Before the trial is failed, while nobody can rerun (and resume) its run: MLflow says KILLED too.
        kill_tracked_run(trial, reason)
        mark_interrupted(study, trial._trial_id, trial.number, reason)


def kill_tracked_run(trial: optuna.trial.FrozenTrial, reason: str) -> None:
    """Mark KILLED the MLflow run a dead trial's task left RUNNING (found through its run folder's spool)."""
    run_dir = trial.system_attrs.get(RUN_DIR_ATTR)
    if not run_dir:
        return
    from captioner.tracking import kill_abandoned_run

    try:
        run_id = kill_abandoned_run(Path(run_dir), reason)
    except Exception as err:  # noqa: BLE001 - MLflow down or refusing: the sweep goes on
        log.warning(f"trial {trial.number}: its MLflow run in {run_dir} stays RUNNING ({err})")
        return
    if run_id is not None:
        log.info(f"trial {trial.number}: MLflow run {run_id} marked KILLED")


@contextmanager
def heartbeat(study: optuna.Study, trial_ids: Collection[int], interval: int | None) -> Iterator[None]:
    """Record Optuna heartbeats for `trial_ids` every `interval` s while the block runs.

    `trial_ids` may change meanwhile (the sweeper adds a trial when it asks it, drops it when told).
    """
    storage = study._storage
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in list(trial_ids):
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as err:  # a busy database must not kill the sweep
                    log.warning(f"heartbeat of trial id {trial_id} failed: {err}")
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
