"""The search space: Hydra sweep overrides as Optuna distributions, and grid points that never run twice."""

import itertools
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from captioner.errors import ConfigError, require

# Trial system attribute written by the grid: JSON of the grid point this trial claimed; None = released.
GRID_ATTR = "captioner_grid_point"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def distribution_from_override(override: Override) -> BaseDistribution | str:
    """An Optuna distribution for a sweep override (choice/range/interval), else the fixed value."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    name = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        # Hydra's range excludes `stop` (range(1,5) is 1,2,3,4); Optuna's `high` is the last value.
        values = sorted(override.sweep_iterator())
        require(
            len(values) > 0, f"hydra.sweeper.params.{name}: {override.input_line} is empty; widen the range"
        )
        step = values[1] - values[0] if len(values) > 1 else 1
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=step)
        return FloatDistribution(values[0], values[-1], step=step)
    interval = override.value()
    low, high, log_scale = interval.start, interval.end, "log" in interval.tags
    if isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log_scale)
    return FloatDistribution(float(low), float(high), log=log_scale)


def parse_search_space(overrides: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split overrides into the search space and fixed `key=value` overrides (a later one wins)."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key, value = override.get_key_element(), distribution_from_override(override)
        space.pop(key, None)
        fixed.pop(key, None)
        if isinstance(value, BaseDistribution):
            space[key] = value
        else:
            fixed[key] = value
    return space, fixed


def grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    """The grid points of one discrete distribution (GridSampler needs choice(...) or range(...))."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        return [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
    raise ConfigError(
        f"hydra.sweeper.params.{name}: GridSampler needs a discrete parameter, got {dist}; "
        "use choice(...) or range(...), or another sampler (hydra/sweeper/sampler=tpe)"
    )


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask `trial` for parameter `name` from `dist` through the public suggest_* API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def quote(value: str) -> str:
    """`value` as a quoted string in Hydra's override grammar (URLs hold ':' and '/')."""
    return "'" + value.replace("'", "\\'") + "'"


class Grid:
    """The points of a grid search, claimed one trial at a time so that no point runs twice."""

    def __init__(self, space: dict[str, BaseDistribution], seed: int | None) -> None:
        self.names = list(space)
        self.points = [
            dict(zip(self.names, values))
            for values in itertools.product(*(grid_values(n, d) for n, d in space.items()))
        ]
        self.rng = random.Random(seed)

    def key(self, point: dict[str, Any]) -> str:
        """A point's identity as stored on the trial that claimed it."""
        return json.dumps([point[n] for n in self.names])

    def taken(self, study: optuna.Study, exclude_trial_id: int | None = None) -> set[str]:
        """Points claimed by trials that are running or finished well (FAIL frees a point)."""
        keys = set()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, *FINISHED)):
            if trial._trial_id == exclude_trial_id:
                continue
            if trial.system_attrs.get(GRID_ATTR) is not None:
                keys.add(trial.system_attrs[GRID_ATTR])
            elif all(n in trial.params for n in self.names):  # a trial made without this sweeper
                keys.add(self.key(trial.params))
        return keys

    def n_free(self, study: optuna.Study) -> int:
        """How many points no trial holds."""
        taken = self.taken(study)
        return sum(self.key(p) not in taken for p in self.points)

    def claim(self, study: optuna.Study, trial_id: int) -> dict[str, Any] | None:
        """Claim a free point for `trial_id`; None when every point is taken.

        Optuna's GridSampler picks a random unvisited point, which two workers can pick at once.
        Here a worker writes its claim first and then reads the others': two workers on one point
        both see each other and both let go, so a point never has two holders (with "lowest
        trial number wins" both could win when one read before the other wrote).
        """
        contended = False
        for _ in range(200):
            taken = self.taken(study, exclude_trial_id=trial_id)
            free = [p for p in self.points if self.key(p) not in taken]
            if not free:
                return None
            # In order while alone (trial i runs point i); random once workers collide.
            point = self.rng.choice(free) if contended else free[0]
            study._storage.set_trial_system_attr(trial_id, GRID_ATTR, self.key(point))
            if self.key(point) not in self.taken(study, exclude_trial_id=trial_id):
                return point
            study._storage.set_trial_system_attr(trial_id, GRID_ATTR, None)
            contended = True
            time.sleep(self.rng.uniform(0.0, 0.05))
        raise RuntimeError(f"could not claim a grid point for trial id {trial_id} after 200 tries")
