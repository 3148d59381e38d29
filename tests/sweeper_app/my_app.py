"""Tiny Hydra app swept by tests/test_sweeper.py: returns (x-1)^2 + (y+1)^2.

Test hooks (environment variables holding a trial number, so the command line stays the same
and a re-run resumes the same study): SWEEPER_APP_KILL (SIGKILL the whole sweep process),
SWEEPER_APP_FAIL (raise), SWEEPER_APP_NONE (return None).
"""

import os
import signal
import time

import hydra
import optuna
from omegaconf import DictConfig

from hydra_plugins.captioner_optuna_sweeper import ENV_TRIAL, sweep_trial


def _hook(name: str, trial: int) -> bool:
    return os.environ.get(name) == str(trial)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Evaluate the quadratic; die, fail, return None or get pruned when a hook says so."""
    trial = int(os.environ.get(ENV_TRIAL, "-1"))
    time.sleep(cfg.sleep)
    if _hook("SWEEPER_APP_KILL", trial):
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-sweep (OOM killer, scancel)
    if _hook("SWEEPER_APP_FAIL", trial):
        raise RuntimeError(f"trial {trial} fails on purpose")
    if _hook("SWEEPER_APP_NONE", trial):
        return None
    value = (cfg.x - 1) ** 2 + (cfg.y + 1) ** 2
    if cfg.report:
        handle = sweep_trial()
        for step in range(3):
            handle.report(value + step, step)
            if handle.should_prune():
                raise optuna.TrialPruned()
    return value


if __name__ == "__main__":
    main()
