"""The `hydra/sweeper: optuna` plugin: sweeps, resume after a kill, two workers, failures, pruning."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from captioner.errors import ConfigError
from hydra_plugins.captioner_optuna_sweeper._impl import RUN_DIR_ATTR
from hydra_plugins.captioner_optuna_sweeper.search_space import GRID_ATTR, Grid, parse_search_space
from hydra_plugins.captioner_optuna_sweeper.storage import make_storage
from hydra_plugins.captioner_optuna_sweeper.workers import WORKER_ATTR, fail_dead_trials, heartbeat

APP = Path(__file__).parent / "sweeper_app"
GRID = "hydra/sweeper/sampler=grid"


def sweep_cmd(tmp_path: Path, *overrides: str, storage: str | None = None) -> list[str]:
    """The command line of a multirun of the tiny app with its study in `storage` (tmp_path/optuna.db)."""
    storage = storage or f"sqlite:///{tmp_path}/optuna.db"
    return [
        sys.executable,
        str(APP / "my_app.py"),
        "-m",
        f"hydra.sweep.dir={tmp_path}/multirun",
        # Quoted: a password may hold a comma, which Hydra would read as a sweep over two values.
        f"hydra.sweeper.storage='{storage}'",
        *overrides,
    ]


def run_sweep(
    tmp_path: Path, *overrides: str, env: dict[str, str] | None = None, storage: str | None = None
) -> subprocess.CompletedProcess:
    """Run a sweep to its end (or its death) and return the finished process."""
    return subprocess.run(
        sweep_cmd(tmp_path, *overrides, storage=storage),
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,  # generous: a loaded CI machine
    )


def load(tmp_path: Path, storage: str | None = None) -> optuna.Study:
    """The single study the sweeps in tmp_path (or on `storage`) wrote."""
    storage = storage or f"sqlite:///{tmp_path}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def by_state(study: optuna.Study, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(state,))


# Real training runs on one CPU thread (tests share the machine).
TRAIN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def training_sweep_cmd(tmp_path: Path, *overrides: str) -> list[str]:
    """A one-trial sweep of the real train.py on 40 tiny shapes images (run it from the repo root)."""
    return [
        sys.executable,
        str(APP.parents[1] / "train.py"),
        "-m",
        "sweep=teacher_forcing",
        "scale=smoke",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path}/multirun",
        f"paths.data_dir={tmp_path}/data",
        f"paths.output_dir={tmp_path}/runs",
        "trainer.threads=1",
        "encoder.pretrained=false",
        "data.prepare.n_train=40",
        "data.prepare.n_val=8",
        "data.prepare.n_test=8",
        "data.prepare.n_test_novel=8",
        *overrides,
    ]


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
    assert "trial 3 FAIL worker" in resumed.stderr + resumed.stdout  # said so in the log
    # The killed trial's grid point was run again (grid order: trial i holds point i) ...
    assert json.dumps([dead.params["x"], dead.params["y"]]) in points
    assert [t.number for t in complete] == [0, 1, 2, 4, 5, 6]
    # ... resuming the killed trial's run folder, which held its last.pt.
    old_dir = tmp_path / "multirun" / "3"
    assert dead.system_attrs[RUN_DIR_ATTR] == str(old_dir)
    (rerun,) = [t for t in complete if t.params == dead.params]
    assert rerun.system_attrs[RUN_DIR_ATTR] == str(old_dir)
    # ... in that folder: its job logs there too, and leaves no folder of its own.
    assert (old_dir / "resume.txt").read_text() == str(old_dir)
    assert not (tmp_path / "multirun" / str(rerun.number)).exists()
    others = [t.number for t in complete if t.number > 3 and t.number != rerun.number]
    for number in others:  # the others start fresh
        assert (tmp_path / "multirun" / str(number) / "resume.txt").read_text() == "None"


def test_interrupted_sweep_frees_its_point_at_once(tmp_path: Path) -> None:
    # Ctrl-C mid-trial: the trial is failed on the way out (no waiting for a heartbeat to go stale)
    # and the next run resumes its folder.
    fixed = (GRID, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=s")  # sleep is not a study key
    cmd = sweep_cmd(tmp_path, *fixed, "sleep=60")
    # A shell's background job (CI scripts, nohup) starts with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: restore the default in the child, as a terminal's Ctrl-C finds it.
    sweep = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "multirun" / "0" / "last.pt").exists():  # the trial has started
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)
    sweep.communicate(timeout=120)
    (trial,) = load(tmp_path).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "interrupted (KeyboardInterrupt)"
    rerun = run_sweep(tmp_path, *fixed)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (tmp_path / "multirun" / "0" / "resume.txt").read_text() == str(tmp_path / "multirun" / "0")
    assert not (tmp_path / "multirun" / "1").exists()  # the rerun ran in the folder it resumed


def test_a_run_with_no_trial_completed_exits_1_and_says_why(tmp_path: Path) -> None:
    proc = run_sweep(
        tmp_path, GRID, "hydra.sweeper.n_trials=2", env={"SWEEPER_APP_FAIL": "0", "SWEEPER_APP_NONE": "1"}
    )
    assert proc.returncode == 1
    log = proc.stdout + proc.stderr
    assert "none of the 2 trials this run launched completed" in log
    assert "1x RuntimeError: trial 0 fails on purpose" in log
    assert "1x task returned None" in log


def start_workers(
    tmp_path: Path, n: int, *overrides: str, wrap=lambda i, cmd: cmd, env=None, storage: str | None = None
) -> list:
    """Start `n` sweep workers on one study; each trial waits until all `n` workers run one.

    `env`: extra environment variables per worker index; `wrap(i, cmd)`: worker i's command line.
    """
    cmd = sweep_cmd(tmp_path, *overrides, storage=storage)
    barrier = {"SWEEPER_APP_BARRIER": f"{tmp_path}/barrier:{n}"}
    return [
        subprocess.Popen(
            wrap(i, cmd),
            cwd=tmp_path,
            env={**os.environ, **barrier, **((env or {}).get(i, {}))},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]


def finish(workers: list) -> list[str]:
    """Wait for every worker (generously: a loaded machine) and return their logs."""
    return [w.communicate(timeout=300)[0] for w in workers]


def assert_each_point_complete_once(study: optuna.Study, n_points: int) -> list:
    complete = by_state(study, TrialState.COMPLETE)
    assert len(complete) == n_points
    assert len({(t.params["x"], t.params["y"]) for t in complete}) == n_points
    assert len({t.system_attrs[GRID_ATTR] for t in complete}) == n_points
    return complete


def test_two_workers_share_a_grid_without_duplicates(tmp_path: Path) -> None:
    # Command-line sweeps replace the config's params of the same name: a grid of 3 x 2 points.
    workers = start_workers(tmp_path, 2, GRID, "x=choice(0,1,2)", "y=choice(-1,0)", "sleep=0.2")
    outputs = finish(workers)
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = load(tmp_path)
    complete = assert_each_point_complete_once(study, 6)
    assert not by_state(study, TrialState.FAIL), outputs
    assert len({t.system_attrs[WORKER_ATTR] for t in complete}) == 2, "one worker did all the work"


def unshare_available() -> str | None:
    """Why separate PID namespaces cannot be had here, or None."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return (
        f"unshare --pid is not permitted here: {probe.stderr.decode().strip()}" if probe.returncode else None
    )


def test_workers_in_separate_pid_namespaces_with_one_hostname(tmp_path: Path) -> None:
    # Containers sharing the host's network (and so its hostname): pids repeat and mean nothing
    # across them. Worker 0 runs as pid 2 of its namespace, worker 1 as pid 3 (after /bin/true),
    # so each names a pid the other's namespace lacks (a host:pid check fails the other's trials).
    reason = unshare_available()
    if reason:
        pytest.skip(reason)

    def in_namespace(i: int, cmd: list[str]) -> list[str]:
        first = "/bin/true; " * i
        return ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", first + '"$@"; exit $?', "sh", *cmd]

    overrides = (GRID, "x=choice(0,1,2)", "y=choice(-1,0)", "sleep=0.3")
    workers = start_workers(tmp_path, 2, *overrides, wrap=in_namespace)
    outputs = finish(workers)
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = load(tmp_path)
    assert not by_state(study, TrialState.FAIL), outputs  # nobody was wrongly declared dead
    complete = assert_each_point_complete_once(study, 6)
    assert len({t.system_attrs[WORKER_ATTR] for t in complete}) == 2


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
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: hydra.sweeper.direction: 'up' is not one of ('minimize', 'maximize'); pick one"
    )


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_trial_of_a_silent_worker_is_failed_after_the_grace_period(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1)
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, "another-worker")
    beats = threading.Semaphore(0)
    record = storage.record_heartbeat

    def counted(trial_id: int) -> None:
        record(trial_id)
        beats.release()

    storage.record_heartbeat = counted
    with heartbeat(study, [trial._trial_id], interval=1):
        for _ in range(3):  # the thread keeps beating ...
            assert beats.acquire(timeout=60)
        fail_dead_trials(study, "me", None)  # ... so the trial, beaten just now, is left alone
        assert study.trials[0].state == TrialState.RUNNING
    stopped = time.monotonic()
    while study.trials[0].state == TrialState.RUNNING:  # no beat for > grace (2 intervals)
        assert time.monotonic() - stopped < 60
        time.sleep(0.2)
        fail_dead_trials(study, "me", None)
    assert time.monotonic() - stopped > 1.0  # not before the grace period
    assert "sent no heartbeat for over 2 s" in study.trials[0].user_attrs["fail_reason"]


def test_a_result_after_the_trial_was_failed_is_logged_once(tmp_path: Path, caplog) -> None:
    # A worker silent past the grace period (suspended, cut off) ends its trial after another
    # worker failed it: one warning, no "trial N COMPLETE" line for a result Optuna did not take.
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.captioner_optuna_sweeper._impl import OptunaSweeperImpl
    from hydra_plugins.captioner_optuna_sweeper.workers import mark_interrupted

    sweeper = OptunaSweeperImpl(
        sampler={"_target_": "optuna.samplers.RandomSampler"},
        direction="minimize",
        study_name=None,
        storage=None,
        n_trials=1,
        n_jobs=1,
        params=None,
        custom_search_space=None,
        pruner=None,
        heartbeat_interval=None,
        resume_override=None,
    )
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path}/optuna.db"))
    trial = study.ask()
    trial.suggest_int("x", 0, 3)
    assert mark_interrupted(study, trial._trial_id, trial.number, "worker w sent no heartbeat for over 60 s")
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=1.0)
    caplog.clear()
    with caplog.at_level("INFO", logger="hydra_plugins.captioner_optuna_sweeper._impl"):
        sweeper._tell(study, trial, ret)
    (line,) = caplog.messages
    assert line.startswith("trial 0 ended COMPLETE value=1.0 [x=")
    assert "already FAIL (worker w sent no heartbeat for over 60 s); result not recorded" in line
    assert study.trials[0].state == TrialState.FAIL


@pytest.mark.slow  # an MLflow SQLite store runs its migrations (seconds)
def test_a_dead_trials_mlflow_run_ends_killed_and_a_closed_one_is_left_alone(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from captioner.tracking import KILLED_REASON_TAG, build_tracker

    uri, locks = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "optuna.db.workers"
    locks.mkdir()
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path}/optuna.db"))
    run_ids = {}
    for name in ("killed", "closed"):  # a task SIGKILLed mid-run; one that ended before its worker died
        tracker = build_tracker(True, uri, "exp", name, {"a": 1}, run_dir=tmp_path / name)
        if name == "closed":
            tracker.finish()
        run_ids[name] = tracker.run_id
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, f"worker-{name}")
        study._storage.set_trial_system_attr(trial._trial_id, RUN_DIR_ATTR, str(tmp_path / name))
        (locks / f"worker-{name}.lock").touch()  # a lock file nobody holds: its worker died
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_ids["killed"]).info.status == "RUNNING"

    fail_dead_trials(study, "me", locks)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    killed = client.get_run(run_ids["killed"])
    assert killed.info.status == "KILLED"
    assert killed.data.tags[KILLED_REASON_TAG] == "worker worker-killed died"
    assert client.get_run(run_ids["closed"]).info.status == "FINISHED"


@pytest.mark.slow  # a real tiny training, killed after its first epoch and resumed (~1 min)
def test_killed_training_trial_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    repo = APP.parents[1]
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = training_sweep_cmd(
        tmp_path, storage, "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.epochs=3"
    )
    first = subprocess.Popen(
        cmd, cwd=repo, env=TRAIN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "multirun" / "0" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and first.poll() is None:  # written atomically at the end of epoch 1
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert torch.load(last, weights_only=True)["progress"]["epoch"] < 3, "trained to the end before the kill"

    resumed = subprocess.run(cmd, cwd=repo, env=TRAIN_ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"trial 1 resumes {tmp_path / 'multirun' / '0'}" in resumed.stdout + resumed.stderr
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert torch.load(last, weights_only=True)["progress"]["epoch"] == 3  # finished in the old folder
    assert (tmp_path / "multirun" / "0" / "metrics.json").exists()
    assert not (tmp_path / "multirun" / "1").exists()
    # One MLflow run: marked KILLED when its trial was failed, then continued by the rerun to FINISHED.
    run_id = torch.load(last, weights_only=True)["progress"]["run_id"]
    assert f"trial 0: MLflow run {run_id} marked KILLED" in resumed.stdout + resumed.stderr
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, filter_string="tags.`sweep.trial` != ''")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"


def test_null_n_trials_runs_the_whole_grid_and_needs_a_grid(tmp_path: Path) -> None:
    # 3 x 3 points; the app's n_trials (6) would stop early.
    proc = run_sweep(tmp_path, GRID, "hydra.sweeper.n_trials=null", "x=choice(0,1,2)")
    assert proc.returncode == 0, proc.stderr
    assert len(by_state(load(tmp_path), TrialState.COMPLETE)) == 9
    (tmp_path / "tpe").mkdir()
    bad = run_sweep(tmp_path / "tpe", "hydra.sweeper.n_trials=null")
    assert bad.returncode != 0
    assert "hydra.sweeper.n_trials: null (the whole grid) needs sampler=grid; set a number" in bad.stderr


def test_study_name_follows_the_command_and_the_composed_config() -> None:
    """Rerunning a command resumes its study; after a config file changed (a scale's epochs), the same
    command starts a new study instead of reporting the old one's finished trials."""
    from omegaconf import OmegaConf

    from hydra_plugins.captioner_optuna_sweeper._impl import OptunaSweeperImpl

    sweeper = OptunaSweeperImpl(
        sampler={"_target_": "optuna.samplers.GridSampler", "search_space": {}},
        direction="maximize",
        study_name=None,
        storage=None,
        n_trials=None,
        n_jobs=1,
        params=OmegaConf.create({"trainer.seed": "range(0,3)"}),
        custom_search_space=None,
        pruner=None,
        heartbeat_interval=None,
        resume_override=None,
    )

    def name(epochs: int, arguments: list[str]) -> str:
        sweeper.config = OmegaConf.create(
            {"trainer": {"epochs": epochs}, "hydra": {"job": {"name": "train"}}}
        )
        return sweeper._study(arguments, {}).study_name

    first = name(4, ["sweep=g", "scale=cpu"])
    assert first.startswith("train-") and name(4, ["sweep=g", "scale=cpu"]) == first
    assert name(5, ["sweep=g", "scale=cpu"]) != first  # the scale file now says 5 epochs
    assert name(4, ["sweep=g", "scale=smoke"]) != first
