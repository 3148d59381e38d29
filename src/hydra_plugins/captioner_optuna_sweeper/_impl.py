"""Optuna sweeper: ask trials from a persistent study, launch them through Hydra, tell the results.

Shaped after hydra-optuna-sweeper 1.3 (same `hydra.sweeper` keys), which pins optuna<3 and whose
RDB storage breaks under SQLAlchemy 2. Additions: resume (the study's `n_trials` counts finished
trials over all runs), several workers on one study, grid points that never run twice, failed
and pruned trials recorded instead of aborting the sweep, dead workers' trials failed and their
grid points rerun (resuming the dead trial's checkpoint), the storage password kept out of logs
and saved configs, and a non-zero exit when no trial completed.
"""

import hashlib
import json
import logging
import math
import os
import sys
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.distributions import BaseDistribution
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from captioner.errors import require
from hydra_plugins.captioner_optuna_sweeper import ENV_STORAGE, ENV_STUDY, ENV_TRIAL
from hydra_plugins.captioner_optuna_sweeper.search_space import (
    FINISHED,
    GRID_ATTR,
    Grid,
    parse_search_space,
    quote,
    suggest,
)
from hydra_plugins.captioner_optuna_sweeper.storage import make_storage, mask, password, retry
from hydra_plugins.captioner_optuna_sweeper.trial_seeded import TrialSeededSampler
from hydra_plugins.captioner_optuna_sweeper.workers import (
    INTERRUPTED_ATTR,
    RUN_DIR_ATTR,
    WORKER_ATTR,
    WorkerLock,
    fail_dead_trials,
    heartbeat,
    lock_folder,
    mark_interrupted,
)

log = logging.getLogger(__name__)

GRID_EXHAUSTED = "grid exhausted: other workers took the last points"

DIRECTIONS = ("minimize", "maximize")


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
        resume_override: str | None,
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
        self.heartbeat_interval = heartbeat_interval if storage else None
        self.resume_override = resume_override
        # Random, not host:pid: pids repeat across containers that share a hostname.
        self.worker = uuid.uuid4().hex[:12]
        self.job_overrides: list[str] = []
        self.held: set[int] = set()  # ids of this worker's RUNNING trials (heartbeats)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the storage password out of the jobs' configs, then create the launcher."""
        self.config = config
        self.hydra_context = hydra_context
        if password(self.storage_url):
            # Each job's .hydra/hydra.yaml holds hydra.sweeper.storage and the hydra overrides:
            # they get the masked URL, and sweep_trial() reads the real one from the environment
            # (inherited by in-process, joblib and submitit jobs; never written to a file).
            masked = f"hydra.sweeper.storage={quote(mask(self.storage_url))}"
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweeper.storage = mask(self.storage_url)
                config.hydra.overrides.hydra = [
                    masked if "hydra.sweeper.storage" in o.split("=", 1)[0] else o
                    for o in config.hydra.overrides.hydra
                ]
            # Also wins over a password written in a config file.
            self.job_overrides = [masked]
        if self.storage_url:
            os.environ[ENV_STORAGE] = self.storage_url
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _study(self, arguments: list[str], space: dict[str, BaseDistribution]) -> optuna.Study:
        """Create or load (resume) the study."""
        name = self.study_name
        if name is None:
            # Same command and config -> same study (resume); another search space, or a config file
            # edited since (e.g. a scale's epochs), -> a new study, never the old one's finished trials.
            what = {"overrides": sorted(self._overrides(arguments)), "config": self._base_config()}
            digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
            name = f"{self.config.hydra.job.name}-{digest}"
        if self.is_grid:
            # Points come from Grid.claim as fixed params; the sampler is never consulted for them.
            sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=self.sampler_seed)
        elif self.sampler_seed is not None:  # one stream per trial, not per worker (trial_seeded.py)
            conf = self.sampler_conf
            sampler = TrialSeededSampler(lambda seed: instantiate(conf, seed=seed), self.sampler_seed)
        else:
            sampler = instantiate(self.sampler_conf)
        storage = make_storage(self.storage_url, self.heartbeat_interval)

        def create() -> optuna.Study:
            return optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=self.pruner,
                directions=self.directions,
                load_if_exists=True,
            )

        if storage is None:
            return create()
        # A worker started at the same moment may win the insert: the loser loads it on the next try.
        return retry(create, self.storage_url, f"creating study {name}")

    def _base_config(self) -> dict:
        """The composed job config the trials start from (no ``hydra`` node, interpolations unresolved)."""
        base = OmegaConf.to_container(self.config, resolve=False)
        base.pop("hydra", None)
        return base

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
        if is_heartbeat_enabled(study._storage):
            # A trial without any heartbeat is never stale: beat once now, in case we die before launch.
            study._storage.record_heartbeat(trial._trial_id)
        self.held.add(trial._trial_id)
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, self.worker)
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
        locks, lock = lock_folder(self.storage_url), None
        if locks is not None:
            try:
                lock = WorkerLock(locks, self.worker)
            except OSError as err:  # a file system without POSIX locks (some NFS mounts)
                log.warning(
                    f"no worker lock in {locks} ({err.strerror}); dead workers are found by heartbeat"
                )
                locks = None
        try:
            # From ask to tell, so a trial is never without beats while its job is being prepared.
            with heartbeat(study, self.held, self.heartbeat_interval):
                launched = self._sweep(study, grid, space, fixed, n_trials, locks)
        finally:
            if lock is not None:
                lock.release()
        self._report(study, launched)

    def _sweep(
        self,
        study: optuna.Study,
        grid: Grid | None,
        space: dict[str, BaseDistribution],
        fixed: dict[str, str],
        n_trials: int,
        locks: Path | None,
    ) -> list[int]:
        """The ask-launch-tell loop; returns the numbers of the trials this run launched."""
        fail_dead_trials(study, self.worker, locks)
        counts = self._counts(study)
        # Failures use up this run's budget, so a trial that always fails cannot loop forever;
        # re-running the command retries it.
        budget = n_trials - counts[TrialState.COMPLETE] - counts[TrialState.PRUNED]
        where = mask(self.storage_url) if self.storage_url else "in memory"
        log.info(
            f"Study {study.study_name} ({where}): {counts[TrialState.COMPLETE]} complete, "
            f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed; target {n_trials} finished trials"
        )
        log.info(
            f"Sampler: {'grid' if grid else type(study.sampler).__name__}, directions: {self.directions}, "
            f"worker {self.worker}"
        )
        asked: list[int] = []
        while True:
            fail_dead_trials(study, self.worker, locks)
            counts = self._counts(study)
            in_flight = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING]
            batch = min(self.n_jobs, budget - len(asked), n_trials - in_flight)
            if grid is not None:
                batch = min(batch, grid.n_free(study))
            if batch <= 0:
                break
            trials = [self._ask(study, grid, space) for _ in range(batch)]
            asked += self._run_batch(study, trials, fixed)
        return asked

    @staticmethod
    def _counts(study: optuna.Study) -> dict[TrialState, int]:
        """Number of trials per state."""
        counts = dict.fromkeys(TrialState, 0)
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state] += 1
        return counts

    def _run_dir(self, number: int, overrides: list[str]) -> Path:
        """The job folder Hydra will give trial `number` (composed as the launcher composes it)."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.num = number
        return Path(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)).absolute()

    def _resume_from(self, study: optuna.Study, trial: optuna.Trial) -> str | None:
        """The run folder of an interrupted earlier trial on this trial's grid point that left a last.pt."""
        key = study._storage.get_trial_system_attrs(trial._trial_id).get(GRID_ATTR)
        if self.resume_override is None or key is None:
            return None
        for old in reversed(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))):
            attrs = old.system_attrs
            if attrs.get(GRID_ATTR) == key and attrs.get(INTERRUPTED_ATTR) and attrs.get(RUN_DIR_ATTR):
                if (Path(attrs[RUN_DIR_ATTR]) / "last.pt").is_file():
                    return attrs[RUN_DIR_ATTR]
        return None

    def _run_batch(self, study: optuna.Study, trials: list[optuna.Trial], fixed: dict[str, str]) -> list[int]:
        """Launch `trials` as Hydra jobs and tell Optuna how each ended; returns the launched numbers."""
        runnable, jobs = [], []
        for trial in trials:
            if not trial.params and self.is_grid:
                study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", GRID_EXHAUSTED)
                study.tell(trial, state=TrialState.FAIL)
                self.held.discard(trial._trial_id)
                log.info(f"trial {trial.number} FAIL {GRID_EXHAUSTED}")
                continue
            overlap = set(trial.params) & set(fixed)
            require(
                not overlap, f"hydra.sweeper.params: {sorted(overlap)} are both searched and fixed; drop one"
            )
            overrides = [f"{k}={v}" for k, v in trial.params.items()] + [f"{k}={v}" for k, v in fixed.items()]
            resume = self._resume_from(study, trial)
            hydra_overrides = []
            if resume is not None:
                # Rerun of an interrupted trial: continue its checkpoint, in its folder, whose train.log the
                # job's log goes on in (and whose .hydra/ record of the first start stays).
                overrides.append(f"{self.resume_override}={quote(resume)}")
                hydra_overrides = [f"hydra.sweep.subdir={quote(resume)}", "hydra.output_subdir=null"]
                log.info(f"trial {trial.number} resumes {resume}")
            trial.set_user_attr("overrides", overrides)
            # env_set reaches the task under every launcher (in-process, joblib, submitit).
            # (Not the storage URL: it may hold a password; sweep_trial() reads it from ENV_STORAGE.)
            env = {ENV_STUDY: study.study_name, ENV_TRIAL: str(trial.number)}
            job = (
                overrides
                + [f"++hydra.job.env_set.{k}={quote(v)}" for k, v in env.items()]
                + hydra_overrides
                + self.job_overrides
            )
            run_dir = resume or str(self._run_dir(trial.number, job))
            study._storage.set_trial_system_attr(trial._trial_id, RUN_DIR_ATTR, run_dir)
            jobs.append(job)
            runnable.append(trial)
        returns: list[JobReturn] = []
        try:
            # Job folders are numbered by trial, so workers sharing a sweep dir never collide.
            i = 0
            while i < len(runnable):
                j = i + 1
                while j < len(runnable) and runnable[j].number == runnable[j - 1].number + 1:
                    j += 1
                returns += self.launcher.launch(jobs[i:j], initial_job_idx=runnable[i].number)
                i = j
        except BaseException as err:  # Ctrl-C, a task's sys.exit: free the points for a resumed rerun
            for trial, ret in zip(runnable, returns):
                self._tell(study, trial, ret)
            for trial in runnable[len(returns) :]:
                mark_interrupted(study, trial._trial_id, trial.number, f"interrupted ({type(err).__name__})")
            raise
        for trial, ret in zip(runnable, returns):
            self._tell(study, trial, ret)
        return [t.number for t in runnable]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> None:
        """Record how one job ended, and log one line about it."""
        self.held.discard(trial._trial_id)
        state, values, reason = outcome(ret, len(self.directions))
        shown = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        result = f"value={values[0] if len(values) == 1 else values}" if values else reason.split("\n")[0]
        try:
            if reason:
                trial.set_user_attr("fail_reason", reason)
            study.tell(trial, values=values, state=state)
        except (ValueError, RuntimeError) as err:
            # A worker that was silent past the heartbeat's grace (suspended, cut off from the
            # database) finds its trial failed by another worker, which may rerun its point.
            held = study._storage.get_trial(trial._trial_id)
            log.warning(
                f"trial {trial.number} ended {state.name} {result} [{shown}], but it was already "
                f"{held.state.name} ({held.user_attrs.get('fail_reason', err)}); result not recorded"
            )
            return
        log.info(f"trial {trial.number} {state.name} {result} [{shown}]")

    def _report(self, study: optuna.Study, launched: list[int]) -> None:
        """Log the best trial(s), write optimization_results.yaml into the sweep dir, and exit 1
        when this run launched trials and none of them finished."""
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
        mine = [t for t in study.get_trials(deepcopy=False) if t.number in set(launched)]
        if not mine or any(t.state in FINISHED for t in mine):
            return
        reasons = Counter(str(t.user_attrs.get("fail_reason", t.state.name)).split("\n")[0] for t in mine)
        log.error(f"Study {study.study_name}: none of the {len(mine)} trials this run launched completed:")
        for reason, n in reasons.most_common():
            log.error(f"  {n}x {reason}")
        sys.exit(1)
