"""Optuna sweeper: ask trials from a persistent study, launch them through Hydra, tell the results.

Shaped after hydra-optuna-sweeper 1.3 (same `hydra.sweeper` keys), which pins optuna<3 and whose
RDB storage breaks under SQLAlchemy 2. Additions: resume (the study's `n_trials` counts finished
trials over all runs), several workers on one study, grid points that never run twice, failed
and pruned trials recorded instead of aborting the sweep.
"""

import hashlib
import itertools
import json
import logging
import math
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from captioner.errors import ConfigError, require
from hydra_plugins.captioner_optuna_sweeper import ENV_STUDY, ENV_TRIAL

log = logging.getLogger(__name__)

# Trial system attributes written by this sweeper.
WORKER_ATTR = "captioner_worker"  # "host:pid" of the sweeper process that holds the trial
GRID_ATTR = "captioner_grid_point"  # JSON of the grid point this trial claimed; None = released

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DIRECTIONS = ("minimize", "maximize")


def make_storage(
    url: str | None, heartbeat_interval: int | None = None
) -> optuna.storages.BaseStorage | None:
    """An RDBStorage for `url` that tolerates several processes on one SQLite file; None: in memory."""
    if url is None:
        return None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Workers share the file: wait for its lock instead of failing with "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 30}
    hb = (
        {"heartbeat_interval": heartbeat_interval, "grace_period": 2 * heartbeat_interval}
        if heartbeat_interval
        else {}
    )
    # Workers started together race to create the tables; the loser sees them on the next try.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                # Heartbeats have been "experimental" since Optuna 2.9; we rely on them knowingly.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            if attempt == 4:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


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


def worker_id() -> str:
    """This sweeper process as `host:pid` (stored on the trials it holds)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark RUNNING trials of a dead worker FAIL, so that the budget and the grid point come back.

    Same host: the worker's pid is gone (a killed sweep, caught at once). Other hosts: Optuna's
    heartbeat went stale (after 2 heartbeat intervals).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op unless the storage has heartbeats
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_ATTR)
        if not worker:
            continue
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == host and not pid_alive(int(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker {worker} died")
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker cleaned it up first
            log.warning(f"trial {trial.number}: worker {worker} died; marked FAIL")


@contextmanager
def heartbeat(study: optuna.Study, trial_ids: Sequence[int], interval: int | None) -> Iterator[None]:
    """Record Optuna heartbeats for `trial_ids` every `interval` s while the block runs."""
    storage = study._storage
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
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


def outcome(ret: JobReturn, n_objectives: int) -> tuple[TrialState, list[float] | None, str]:
    """The trial state, objective values and a one-line reason from a Hydra job's return."""
    try:
        value = ret.return_value
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, "pruned"
    except Exception as err:
        log.warning(f"job {ret.overrides} raised", exc_info=err)
        return TrialState.FAIL, None, f"{type(err).__name__}: {err}"
    raw = [value] if n_objectives == 1 else value
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return (
            TrialState.FAIL,
            None,
            f"task returned {value!r}; it must return a float ({n_objectives} objective(s))",
        )
    if len(values) != n_objectives or not all(math.isfinite(v) for v in values):
        return TrialState.FAIL, None, f"task returned {value!r}; expected {n_objectives} finite float(s)"
    return TrialState.COMPLETE, values, ""


class OptunaSweeperImpl:
    """Sweeper logic; constructor arguments are the `hydra.sweeper` keys (see config.py)."""

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
    ) -> None:
        directions = [direction] if isinstance(direction, str) else list(direction)
        for d in directions:
            require(d in DIRECTIONS, f"hydra.sweeper.direction: {d!r} is not one of {DIRECTIONS}; pick one")
        require(
            n_trials is None or n_trials >= 1,
            f"hydra.sweeper.n_trials: {n_trials} must be >= 1 (null: the whole grid)",
        )
        require(n_jobs >= 1, f"hydra.sweeper.n_jobs: {n_jobs} must be >= 1")
        require(
            heartbeat_interval is None or heartbeat_interval >= 1,
            f"hydra.sweeper.heartbeat_interval: {heartbeat_interval} must be >= 1 second, or null for off",
        )
        require(
            sampler is not None and "_target_" in sampler,
            f"hydra.sweeper.sampler: {sampler} has no _target_; pick hydra/sweeper/sampler=tpe|random|grid",
        )
        sampler_cls = get_class(sampler["_target_"])
        self.is_grid = issubclass(sampler_cls, optuna.samplers.GridSampler)
        self.sampler_conf = sampler
        self.sampler_seed = sampler.get("seed")
        self.directions = directions
        self.study_name = study_name
        self.storage_url = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = OmegaConf.to_container(params) if params is not None else {}
        self.custom_search_space = get_method(custom_search_space) if custom_search_space else None
        # No pruner configured means no pruning: optuna.create_study(pruner=None) would pick MedianPruner.
        self.pruner = instantiate(pruner) if pruner else optuna.pruners.NopPruner()
        self.heartbeat_interval = heartbeat_interval

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Create the launcher that will run the trials."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _study(self, arguments: list[str], space: dict[str, BaseDistribution]) -> optuna.Study:
        """Create or load (resume) the study."""
        name = self.study_name
        if name is None:
            # Same command -> same study (resume); another search space -> a new study.
            digest = hashlib.sha1(json.dumps(sorted(self._overrides(arguments))).encode()).hexdigest()[:8]
            name = f"{self.config.hydra.job.name}-{digest}"
        if self.is_grid:
            # Points come from Grid.claim as fixed params; the sampler is never consulted for them.
            sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=self.sampler_seed)
        else:
            sampler = instantiate(self.sampler_conf)
        storage = make_storage(self.storage_url, self.heartbeat_interval)
        for attempt in range(5):
            try:
                return optuna.create_study(
                    study_name=name,
                    storage=storage,
                    sampler=sampler,
                    pruner=self.pruner,
                    directions=self.directions,
                    load_if_exists=True,
                )
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
                if attempt == 4:
                    raise
                time.sleep(0.2 + random.random())  # a worker started at the same moment won the insert
        raise AssertionError("unreachable")

    def _overrides(self, arguments: list[str]) -> list[str]:
        """`hydra.sweeper.params` then the command line's task overrides (which win)."""
        return [f"{k}={v}" for k, v in self.params.items()] + list(arguments)

    def _ask(
        self, study: optuna.Study, grid: Grid | None, space: dict[str, BaseDistribution]
    ) -> optuna.Trial:
        """A new trial with its parameters chosen; with a grid, holding a point nobody else holds."""
        with warnings.catch_warnings():
            # Optuna records heartbeats only inside Study.optimize; `heartbeat()` does it for us.
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
            trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())
        if grid is not None:
            point = grid.claim(study, trial._trial_id)
            if point is None:
                return trial  # caller sees no params and records the trial FAIL
            # Optuna's enqueue_trial mechanism: suggest_* returns these values.
            study._storage.set_trial_system_attr(trial._trial_id, "fixed_params", point)
            trial = optuna.Trial(study, trial._trial_id)
        for name, dist in space.items():
            suggest(trial, name, dist)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        return trial

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study holds `n_trials` finished ones or this run's budget is spent."""
        space, fixed = parse_search_space(self._overrides(arguments))
        grid = Grid(space, self.sampler_seed) if self.is_grid else None
        n_trials = self.n_trials
        if grid is not None:  # null: the whole grid (e.g. versions x seeds, whatever their number)
            n_trials = len(grid.points) if n_trials is None else min(n_trials, len(grid.points))
        require(
            n_trials is not None,
            "hydra.sweeper.n_trials: null (the whole grid) needs sampler=grid; set a number",
        )
        study = self._study(arguments, space)
        fail_dead_trials(study)
        counts = self._counts(study)
        # Failures use up this run's budget, so a trial that always fails cannot loop forever;
        # re-running the command retries it.
        budget = n_trials - counts[TrialState.COMPLETE] - counts[TrialState.PRUNED]
        log.info(
            f"Study {study.study_name} ({self.storage_url or 'in memory'}): {counts[TrialState.COMPLETE]} complete, "
            f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed; target {n_trials} finished trials"
        )
        log.info(
            f"Sampler: {'grid' if grid else type(study.sampler).__name__}, directions: {self.directions}"
        )
        asked = 0
        while True:
            fail_dead_trials(study)
            counts = self._counts(study)
            in_flight = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING]
            batch = min(self.n_jobs, budget - asked, n_trials - in_flight)
            if grid is not None:
                batch = min(batch, grid.n_free(study))
            if batch <= 0:
                break
            trials = [self._ask(study, grid, space) for _ in range(batch)]
            asked += len(trials)
            self._run_batch(study, trials, fixed)
        self._report(study)

    @staticmethod
    def _counts(study: optuna.Study) -> dict[TrialState, int]:
        """Number of trials per state."""
        counts = dict.fromkeys(TrialState, 0)
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state] += 1
        return counts

    def _run_batch(self, study: optuna.Study, trials: list[optuna.Trial], fixed: dict[str, str]) -> None:
        """Launch `trials` as Hydra jobs and tell Optuna how each ended."""
        runnable, jobs = [], []
        for trial in trials:
            if not trial.params and self.is_grid:
                study._storage.set_trial_user_attr(
                    trial._trial_id, "fail_reason", "grid exhausted: other workers took the last points"
                )
                study.tell(trial, state=TrialState.FAIL)
                log.info(f"trial {trial.number} FAIL grid exhausted: other workers took the last points")
                continue
            overlap = set(trial.params) & set(fixed)
            require(
                not overlap, f"hydra.sweeper.params: {sorted(overlap)} are both searched and fixed; drop one"
            )
            overrides = [f"{k}={v}" for k, v in trial.params.items()] + [f"{k}={v}" for k, v in fixed.items()]
            trial.set_user_attr("overrides", overrides)
            # env_set reaches the task under every launcher (in-process, joblib, submitit).
            # (Not the storage URL: it may hold a password; sweep_trial() reads it from HydraConfig.)
            env = {ENV_STUDY: study.study_name, ENV_TRIAL: str(trial.number)}
            jobs.append(overrides + [f"++hydra.job.env_set.{k}={quote(v)}" for k, v in env.items()])
            runnable.append(trial)
        returns: list[JobReturn] = []
        interval = self.heartbeat_interval if self.storage_url else None
        with heartbeat(study, [t._trial_id for t in runnable], interval):
            # Job folders are numbered by trial, so workers sharing a sweep dir never collide.
            i = 0
            while i < len(runnable):
                j = i + 1
                while j < len(runnable) and runnable[j].number == runnable[j - 1].number + 1:
                    j += 1
                returns += self.launcher.launch(jobs[i:j], initial_job_idx=runnable[i].number)
                i = j
        for trial, ret in zip(runnable, returns):
            state, values, reason = outcome(ret, len(self.directions))
            if reason:
                trial.set_user_attr("fail_reason", reason)
            try:
                study.tell(trial, values=values, state=state)
            except (ValueError, RuntimeError) as err:  # marked FAIL meanwhile by another worker
                log.warning(f"trial {trial.number}: could not record {state.name}: {err}")
            shown = ", ".join(f"{k}={v}" for k, v in trial.params.items())
            result = f"value={values[0] if len(values) == 1 else values}" if values else reason
            log.info(f"trial {trial.number} {state.name} {result} [{shown}]")

    def _report(self, study: optuna.Study) -> None:
        """Log the best trial(s) and write optimization_results.yaml into the sweep dir."""
        counts = self._counts(study)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "n_complete": counts[TrialState.COMPLETE],
            "n_pruned": counts[TrialState.PRUNED],
            "n_fail": counts[TrialState.FAIL],
        }
        if counts[TrialState.COMPLETE] == 0:
            log.error(f"Study {study.study_name}: no trial completed; see the fail_reason of the trials")
        elif len(self.directions) == 1:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info(f"Best trial {best.number}: value={best.value} params={best.params}")
        else:
            results["solutions"] = [
                {"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials
            ]
            log.info(f"Pareto front: {len(study.best_trials)} trials")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Workers sharing a sweep dir may write at once: write aside, then rename.
        tmp = sweep_dir / f".optimization_results.{os.getpid()}.yaml"
        OmegaConf.save(OmegaConf.create(results), tmp)
        os.replace(tmp, sweep_dir / "optimization_results.yaml")
