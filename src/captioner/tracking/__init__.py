"""MLflow tracking: one run per training, flattened params, step metrics, artifacts; sweeps nest runs.

The default store is local and embedded (a SQLite file), so the UI (`make ui`) works with no server.
Everything a run logs is spooled to ``tracking_spool.jsonl`` in its run folder and sent by a
background thread, so an MLflow outage never stops training; ``python -m captioner.tracking sync
<run_dir>`` sends what a run could not. Under an Optuna sweep (our sweeper sets CAPTIONER_SWEEP_STUDY /
CAPTIONER_SWEEP_TRIAL), each trial's run is a child of one parent run per study.
"""

from captioner.tracking.abandoned import KILLED_REASON_TAG, kill_abandoned_run
from captioner.tracking.spool import SPOOL_NAME, read_spool, spooled_run_id
from captioner.tracking.tracker import (
    SWEEP_STUDY_ENV,
    SWEEP_TRIAL_ENV,
    MlflowTracker,
    NullTracker,
    build_tracker,
    flatten,
)

__all__ = [
    "KILLED_REASON_TAG",
    "SPOOL_NAME",
    "SWEEP_STUDY_ENV",
    "SWEEP_TRIAL_ENV",
    "MlflowTracker",
    "NullTracker",
    "build_tracker",
    "flatten",
    "kill_abandoned_run",
    "read_spool",
    "spooled_run_id",
]
