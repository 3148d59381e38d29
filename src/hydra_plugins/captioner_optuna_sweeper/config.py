"""Structured configs of the `hydra/sweeper: optuna` plugin, registered in Hydra's ConfigStore."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConf:
    """optuna.samplers.TPESampler (the default: Bayesian optimisation)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    multivariate: bool = False
    # Optuna's default: running trials count as "lied" bad values, so parallel workers spread out.
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    """optuna.samplers.RandomSampler."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf:
    """Grid over the `params` choice/range lists; each point runs once, also across workers."""

    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None


@dataclass
class MedianPrunerConf:
    """optuna.pruners.MedianPruner: stop a trial whose intermediate value is worse than the median."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConf:
    """optuna.pruners.HyperbandPruner."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConf:
    """optuna.pruners.ThresholdPruner: stop a trial whose intermediate value leaves [lower, upper]
    (e.g. a captioner still naming no objects after two epochs: lower 0.1 on object F1, n_warmup_steps 1)."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class OptunaSweeperConf:
    """`hydra.sweeper` keys; they map 1:1 to OptunaSweeper's constructor arguments."""

    _target_: str = "hydra_plugins.captioner_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # The sweeper builds sampler and pruner itself (a GridSampler needs the search space first).
    _recursive_: bool = False
    # _self_ first: the chosen sampler/pruner groups fill the null fields below, not the reverse.
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}])

    # Any optuna sampler: `_target_` plus its keyword arguments.
    sampler: Any = None
    # minimize | maximize, or a list of them for a multi-objective task (it returns a list).
    direction: Any = "minimize"
    # null: "<job name>-<hash of the search space and task overrides>", so re-running the same
    # command resumes the same study and a different search space starts a new one.
    study_name: str | None = None
    # A fixed place (not the time-stamped sweep dir), so that re-running a command resumes it.
    # null: in-memory study (no resume, no sharing between workers).
    storage: str | None = "sqlite:///${hydra.runtime.cwd}/multirun/optuna.db"
    # Total finished (complete or pruned) trials the study should reach, over all runs and workers.
    # null: every point of the grid (grid sampler only).
    n_trials: int | None = 20
    # Trials asked per batch and handed to the launcher at once (parallel with joblib/submitit).
    n_jobs: int = 1
    # Search space in Hydra's override grammar: choice(a,b), range(1,5), interval(0.1,1.0),
    # tag(log, interval(1e-5,1e-2)); a plain value is a fixed override.
    params: dict[str, Any] | None = None
    # Optional "module.function(cfg, trial)" adding conditional parameters with trial.suggest_*.
    custom_search_space: str | None = None
    # Optional optuna pruner (`_target_` plus kwargs); tasks report intermediate values through
    # hydra_plugins.captioner_optuna_sweeper.sweep_trial().
    pruner: Any = None
    # Seconds between "still running" records (Optuna heartbeats) of each trial; a trial whose
    # worker stopped recording for 2 intervals is marked FAIL and its grid point runs again.
    # null: off (then only workers sharing a SQLite file see each other die).
    heartbeat_interval: int | None = 30
    # The task override that points the rerun of an interrupted trial (worker died, Ctrl-C) at
    # that trial's run folder when it holds a last.pt, so it resumes instead of starting over.
    # null: reruns start over.
    resume_override: str | None = "trainer.resume"


_cs = ConfigStore.instance()
_cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="captioner_optuna_sweeper")
for _name, _node in {"tpe": TPESamplerConf, "random": RandomSamplerConf, "grid": GridSamplerConf}.items():
    _cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="captioner_optuna_sweeper")
for _name, _node in {
    "median": MedianPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "threshold": ThresholdPrunerConf,
}.items():
    _cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="captioner_optuna_sweeper")
