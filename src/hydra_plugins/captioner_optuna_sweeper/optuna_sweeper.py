"""The Hydra Sweeper class that Hydra's plugin scan finds; the work happens in `_impl`."""

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# Imported for its side effect: registers `hydra/sweeper: optuna` in the ConfigStore.
import hydra_plugins.captioner_optuna_sweeper.config  # noqa: F401
from captioner.errors import CaptionerError

T = TypeVar("T")


def one_line_errors(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn`; a user's mistake (bad key, unreachable storage) prints one line and exits 2.

    Hydra would wrap it in "Error in call to target ..." lines and exit 1; SystemExit passes
    through Hydra untouched.
    """
    try:
        return fn(*args, **kwargs)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


class OptunaSweeper(Sweeper):
    """`hydra/sweeper: optuna`: runs Optuna trials through the configured Hydra launcher."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        study_name: str | None,
        storage: str | None,
        n_trials: int | None,
        n_jobs: int,
        params: DictConfig | None,
        custom_search_space: str | None,
        pruner: Any,
        heartbeat_interval: int | None,
        resume_override: str | None,
    ) -> None:
        # Imported here, not at module level: Hydra's plugin scan imports this module on every
        # start of every app, and Optuna + SQLAlchemy take a while to import.
        from hydra_plugins.captioner_optuna_sweeper._impl import OptunaSweeperImpl

        self._impl = one_line_errors(
            OptunaSweeperImpl,
            sampler=sampler,
            direction=direction,
            study_name=study_name,
            storage=storage,
            n_trials=n_trials,
            n_jobs=n_jobs,
            params=params,
            custom_search_space=custom_search_space,
            pruner=pruner,
            heartbeat_interval=heartbeat_interval,
            resume_override=resume_override,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Create the launcher that will run the trials."""
        one_line_errors(
            self._impl.setup, hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study holds `n_trials` finished ones."""
        one_line_errors(self._impl.sweep, arguments)
