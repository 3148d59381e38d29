"""Tiny Hydra app swept by tests/test_sweeper.py: returns (x-1)^2 + (y+1)^2.

Test hooks (environment variables holding a trial number, so the command line stays the same
and a re-run resumes the same study): SWEEPER_APP_KILL (SIGKILL the whole sweep process),
SWEEPER_APP_FAIL (raise), SWEEPER_APP_NONE (return None). SWEEPER_APP_KILL_FIRST=1 kills this
worker in its first trial, whatever its number. SWEEPER_APP_BARRIER=<folder>:<n>: each trial
waits until trials of <n> different worker processes have started (so workers surely overlap).

Like training, each trial writes last.pt into its run folder, and writes `resume.txt` there with
the folder it was told to resume (`trainer.resume`).
"""

import os
import signal
import time
import uuid
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hydra_plugins.captioner_optuna_sweeper import ENV_TRIAL, sweep_trial

# One id per worker process (pids repeat across PID namespaces).
PROCESS = uuid.uuid4().hex
STARTED = []


def _hook(name: str, trial: int) -> bool:
    return os.environ.get(name) == str(trial)


def _barrier(spec: str) -> None:
    """Mark this process as started and wait (up to 120 s) until `n` processes have."""
    folder, n = spec.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / PROCESS).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(folder).iterdir())) < int(n):
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {spec}: the other workers never started a trial")
        time.sleep(0.05)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Evaluate the quadratic; die, fail, return None or get pruned when a hook says so."""
    trial = int(os.environ.get(ENV_TRIAL, "-1"))
    run_dir = Path(cfg.trainer.resume or HydraConfig.get().runtime.output_dir)
    (run_dir / "last.pt").write_text(str(trial))
    (Path(HydraConfig.get().runtime.output_dir) / "resume.txt").write_text(str(cfg.trainer.resume))
    if "SWEEPER_APP_BARRIER" in os.environ:
        _barrier(os.environ["SWEEPER_APP_BARRIER"])
    first = not STARTED
    STARTED.append(trial)
    time.sleep(cfg.sleep)
    if _hook("SWEEPER_APP_KILL", trial) or (first and os.environ.get("SWEEPER_APP_KILL_FIRST") == "1"):
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
