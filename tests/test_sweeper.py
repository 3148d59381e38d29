"""The `hydra/sweeper: optuna` plugin: sweeps, resume after a kill, two workers, failures, pruning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from captioner.errors import ConfigError
from hydra_plugins.captioner_optuna_sweeper._impl import (
    GRID_ATTR,
    WORKER_ATTR,
    Grid,
    fail_dead_trials,
    heartbeat,
    make_storage,
    parse_search_space,
)

APP = Path(__file__).parent / "sweeper_app"
GRID = "hydra/sweeper/sampler=grid"


def sweep_cmd(tmp_path: Path, *overrides: str) -> list[str]:
    """The command line of a multirun of the tiny app with its study in tmp_path/optuna.db."""
    return [
        sys.executable,
        str(APP / "my_app.py"),
        "-m",
        f"hydra.sweep.dir={tmp_path}/multirun",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        *overrides,
    ]


def run_sweep(
    tmp_path: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a sweep to its end (or its death) and return the finished process."""
    return subprocess.run(
        sweep_cmd(tmp_path, *overrides),
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def load(tmp_path: Path) -> optuna.Study:
    """The single study the sweeps in tmp_path wrote."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def by_state(study: optuna.Study, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(state,))


def test_hydra_finds_the_plugin() -> None:
    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "OptunaSweeper" in names
    assert not any("hydra_optuna_sweeper" in p.__module__ for p in Plugins.instance().discover(Sweeper)), (
        "the stock hydra-optuna-sweeper is installed and also registers hydra/sweeper=optuna; uninstall it"
    )


def test_params_map_to_optuna_distributions() -> None:
    space, fixed = parse_search_space(
        ["x=range(-2,3)", "lr=tag(log, interval(1e-5, 1e-2))", "y=choice(a,b)", "z=4", "z=range(1,4)", "y=c"]
    )
    assert space["x"] == IntDistribution(-2, 2)  # Hydra's range excludes its stop
    assert space["lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space["z"] == IntDistribution(1, 3)  # the later override wins
    assert fixed == {"y": "c"}
    assert len(Grid({"x": space["x"], "z": space["z"]}, seed=0).points) == 15
    with pytest.raises(ConfigError, match="GridSampler needs a discrete parameter"):
        Grid({"lr": space["lr"]}, seed=0)


def test_sweep_records_n_trials_complete(tmp_path: Path) -> None:
    proc = run_sweep(tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.seed=0")
    assert proc.returncode == 0, proc.stderr
    study = load(tmp_path)
    assert len(by_state(study, TrialState.COMPLETE)) == 6
    assert "Best trial" in proc.stderr + proc.stdout
    results = (tmp_path / "multirun" / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in results
    # Job folders are numbered by trial, and each task saw its trial through the environment.
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()) == [
        str(i) for i in range(6)
    ]


def test_killed_sweep_resumes_without_repeating(tmp_path: Path) -> None:
    killed = run_sweep(tmp_path, GRID, env={"SWEEPER_APP_KILL": "3"})
    assert killed.returncode == -signal.SIGKILL
    study = load(tmp_path)
    assert len(by_state(study, TrialState.COMPLETE)) == 3
    assert len(by_state(study, TrialState.RUNNING)) == 1  # what a kill leaves behind

    resumed = run_sweep(tmp_path, GRID)  # the very same command
    assert resumed.returncode == 0, resumed.stderr
    study = load(tmp_path)
    complete = by_state(study, TrialState.COMPLETE)
    assert len(complete) == 6
    points = [json.dumps([t.params["x"], t.params["y"]]) for t in complete]
    assert len(set(points)) == 6, points
    (dead,) = by_state(study, TrialState.FAIL)
    assert dead.number == 3 and "died" in dead.user_attrs["fail_reason"]
    # The killed trial's grid point was run again (grid order: trial i holds point i).
    assert json.dumps([dead.params["x"], dead.params["y"]]) in points
    assert [t.number for t in complete] == [0, 1, 2, 4, 5, 6]


def test_two_workers_share_a_grid_without_duplicates(tmp_path: Path) -> None:
    # Command-line sweeps replace the config's params of the same name: a grid of 3 x 2 points.
    overrides = (GRID, "x=choice(0,1,2)", "y=choice(-1,0)", "sleep=0.4")
    cmd = sweep_cmd(tmp_path, *overrides)
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=60)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = load(tmp_path)
    complete = by_state(study, TrialState.COMPLETE)
    assert len(complete) == 6
    assert len({(t.params["x"], t.params["y"]) for t in complete}) == 6
    assert len({t.system_attrs[GRID_ATTR] for t in complete}) == 6
    assert len({t.system_attrs[WORKER_ATTR] for t in complete}) == 2, "one worker did all the work"


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    proc = run_sweep(tmp_path, GRID, env={"SWEEPER_APP_FAIL": "1", "SWEEPER_APP_NONE": "3"})
    assert proc.returncode == 0, proc.stderr
    study = load(tmp_path)
    failed = {t.number: t.user_attrs["fail_reason"] for t in by_state(study, TrialState.FAIL)}
    assert failed[1] == "RuntimeError: trial 1 fails on purpose"
    assert "returned None" in failed[3]
    assert sorted(t.number for t in by_state(study, TrialState.COMPLETE)) == [0, 2, 4, 5]
    assert "n_fail: 2" in (tmp_path / "multirun" / "optimization_results.yaml").read_text()


def test_task_reports_to_the_pruner(tmp_path: Path) -> None:
    # Grid order gives values 9, 10, 13: after trial 0, the worse ones fall above the median.
    proc = run_sweep(
        tmp_path,
        GRID,
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.n_trials=3",
        "report=true",
    )
    assert proc.returncode == 0, proc.stderr
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert study.trials[1].intermediate_values == {0: 10.0}


def test_bad_direction_is_a_one_line_config_error(tmp_path: Path) -> None:
    proc = run_sweep(tmp_path, "hydra.sweeper.direction=up")
    assert proc.returncode != 0
    assert "hydra.sweeper.direction: 'up' is not one of ('minimize', 'maximize')" in proc.stderr


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_trial_of_a_silent_worker_on_another_host_is_failed(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1)
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, "another-host:1")
    with heartbeat(study, [trial._trial_id], interval=1):
        time.sleep(2.5)
        fail_dead_trials(study)  # still beating: left alone
    assert study.trials[0].state == TrialState.RUNNING
    time.sleep(2.5)  # > grace period (2 intervals) without a beat
    fail_dead_trials(study)
    assert study.trials[0].state == TrialState.FAIL


def test_null_n_trials_runs_the_whole_grid_and_needs_a_grid(tmp_path: Path) -> None:
    # 3 x 3 points; the app's n_trials (6) would stop early.
    proc = run_sweep(tmp_path, GRID, "hydra.sweeper.n_trials=null", "x=choice(0,1,2)")
    assert proc.returncode == 0, proc.stderr
    assert len(by_state(load(tmp_path), TrialState.COMPLETE)) == 9
    (tmp_path / "tpe").mkdir()
    bad = run_sweep(tmp_path / "tpe", "hydra.sweeper.n_trials=null")
    assert bad.returncode != 0
    assert "hydra.sweeper.n_trials: null (the whole grid) needs sampler=grid; set a number" in bad.stderr
