"""Optuna sweeper for Hydra on current Optuna/SQLAlchemy, registered as `hydra/sweeper: optuna`.

A task launched by the sweeper finds its study and trial in these environment variables (set
through `hydra.job.env_set`, so they reach the task under every launcher); `sweep_trial()` turns
them into an `optuna.Trial` for reporting intermediate values to the pruner.
"""

import os
from typing import Any

ENV_STUDY = "CAPTIONER_SWEEP_STUDY"
ENV_TRIAL = "CAPTIONER_SWEEP_TRIAL"
# The storage URL for sweep_trial(), set by the sweeper in its own environment (inherited by
# the jobs), because the jobs' saved configs hold it with the password masked.
ENV_STORAGE = "CAPTIONER_SWEEP_STORAGE"


def sweep_trial() -> Any:
    """The running task's `optuna.Trial` (with the sweep's pruner), or None outside a sweep.

    Use: `trial.report(value, step)`, then `if trial.should_prune(): raise optuna.TrialPruned()`;
    the sweeper records that trial as PRUNED.
    """
    if ENV_TRIAL not in os.environ:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from captioner.errors import require
    from hydra_plugins.captioner_optuna_sweeper.storage import make_storage

    sweeper = HydraConfig.get().sweeper
    url = os.environ.get(ENV_STORAGE) if sweeper.storage else None
    require(
        url is not None,
        "hydra.sweeper.storage: null (in memory) cannot be shared with the task; set a URL",
    )
    # No pruner configured means no pruning (optuna.load_study(pruner=None) would pick MedianPruner).
    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
    storage = make_storage(url)
    study = optuna.load_study(study_name=os.environ[ENV_STUDY], storage=storage, pruner=pruner)
    number = int(os.environ[ENV_TRIAL])
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.Trial(study, trial_id)
