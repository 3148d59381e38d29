"""A seeded sampler that several workers can share: each trial's draws come from (seed, trial number).

Optuna's samplers keep one random stream per process, so two workers started with the same
``sampler.seed`` propose the same points, trial for trial (a 2-worker TPE search ran each of its first
points twice). Here every trial gets its own sampler, seeded from the study's seed and the trial's number,
which the storage makes unique. No two workers share a stream, one worker repeats itself exactly, and a
resumed search draws what it would have drawn. A sampler that models earlier trials (TPE) reads them from
the storage each time, so a fresh one per trial loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` in a study seeded ``seed`` (fits numpy's 32-bit seeds)."""
    return (seed * 1_000_003 + number) % 2**32


class TrialSeededSampler(BaseSampler):
    """Delegates every call for a trial to ``make(trial_seed(seed, trial.number))``, made once per trial."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._samplers: dict[int, BaseSampler] = {}

    def _of(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)  # the trial is over: its sampler is never asked again

    def reseed_rng(self) -> None:
        """Nothing to reseed: each trial's stream is fixed by its number."""
