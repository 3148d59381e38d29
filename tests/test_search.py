"""search=quality: a pruned TPE search of the real train.py, its resume, and its report."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def search_cmd(tmp_path: Path, *overrides: str) -> list[str]:
    """The quality search at smoke scale on 40 tiny shapes images, MLflow in ``tmp_path``."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "search=quality",
        "scale=smoke",
        "trainer.epochs=2",
        "decoder=small",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweep.dir={tmp_path}/multirun",
        f"paths.data_dir={tmp_path}/data",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "encoder.pretrained=false",
        *(
            f"data.prepare.{k}={v}"
            for k, v in {"n_train": 40, "n_val": 8, "n_test": 8, "n_test_novel": 0}.items()
        ),
        *overrides,
    ]


def study_in(tmp_path: Path) -> optuna.Study:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_search_prunes_trials_and_records_them_as_pruned(tmp_path: Path) -> None:
    """A pruner that must prune (object F1 can never reach 2) stops every trial after its first
    validation: PRUNED in Optuna, KILLED with a `pruned` tag and the epoch in MLflow."""
    proc = subprocess.run(
        search_cmd(
            tmp_path,
            "hydra.sweeper.n_trials=2",
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=2.0",
            "hydra.sweeper.pruner.n_warmup_steps=0",
        ),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    study = study_in(tmp_path)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == 2, proc.stderr[-3000:]
    assert all(list(t.intermediate_values) == [1] for t in pruned)  # stopped after epoch 1 of 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("search-quality-smoke")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.trial")]
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "KILLED", run.data.tags
        assert run.data.tags.get("pruned") == "true" and run.data.tags.get("pruned.epoch") == "1"


@pytest.mark.slow  # three short trainings, one killed mid-run
def test_killed_search_resumes_its_study_without_repeating_a_trial(tmp_path: Path) -> None:
    """SIGKILL during the second trial; the same command finishes the study's budget: every trial
    number once, the killed one FAIL, the others COMPLETE."""
    cmd = search_cmd(tmp_path, "hydra.sweeper.n_trials=3")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if (tmp_path / "optuna.db").exists():
            trials = study_in(tmp_path).get_trials(deepcopy=False)
            if any(t.state == TrialState.COMPLETE for t in trials) and len(trials) >= 2:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = study_in(tmp_path).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 3
    assert states.count(TrialState.FAIL) == 1 and states[1] == TrialState.FAIL
    assert [t.number for t in trials] == list(range(len(trials)))


def _search_report():
    spec = importlib.util.spec_from_file_location("search_report", REPO / "sweeps" / "search_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_report_names_the_best_trial_its_importances_and_exports_it(tmp_path: Path) -> None:
    """On a study with a known best: the report, the fANOVA importances (the one parameter that
    decides the objective first) and the exported experiment config that composes."""
    report = _search_report()
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path}/o.db", study_name="s")
    space = {
        "optimizer.decoder_lr": FloatDistribution(1e-4, 1e-2, log=True),
        "decoder.coverage": CategoricalDistribution([True, False]),
    }
    for i in range(12):
        lr = 1e-4 * (1.5**i)
        params = {"optimizer.decoder_lr": lr, "decoder.coverage": i % 2 == 0}
        study.add_trial(optuna.create_trial(params=params, distributions=space, value=-abs(lr - 4e-3)))
    study.add_trial(
        optuna.create_trial(
            params={"optimizer.decoder_lr": 1e-3, "decoder.coverage": True},
            distributions=space,
            state=TrialState.PRUNED,
            intermediate_values={1: 0.0},
        )
    )
    s = report.summarize(study)
    assert s["counts"] == {"COMPLETE": 12, "PRUNED": 1}
    assert s["best"]["number"] == 9  # 1e-4 * 1.5**9 = 3.8e-3, the nearest to 4e-3
    assert max(s["importances"], key=s["importances"].get) == "optimizer.decoder_lr"
    md = report.markdown(s, "search-quality-cpu")
    assert "**Best trial 9:" in md and "| optimizer.decoder_lr | 0.00384 |" in md
    files = report.plots(study, tmp_path / "search")
    assert all(p.stat().st_size > 1000 for p in files)
    out = tmp_path / "quality_searched.yaml"
    search = REPO / "sweeps" / "search" / "quality.yaml"
    written = report.export(
        s["best"]["params"], REPO / "conf" / "experiment" / "quality.yaml", search, out, "s"
    )
    from omegaconf import OmegaConf

    assert written == [out, tmp_path / "quality_searched_scst.yaml"]
    cfg = OmegaConf.load(out)
    assert cfg.optimizer.decoder_lr == pytest.approx(1e-4 * 1.5**9) and cfg.decoder.coverage is False
    assert cfg.decoder.attend_word is True and cfg.logger.experiment == "quality_searched"
    assert (
        cfg.trainer.early_stop.metric == "object_f1"
    )  # the search's objective picks best.pt, as in its trials
    # the SCST stage keeps quality_scst's optimisation and takes only the searched model's keys
    scst = OmegaConf.load(written[1])
    assert list(scst.defaults) == ["quality_scst"] and scst.decoder.coverage is False
    assert "optimizer" not in scst and scst.logger.experiment == "quality_searched_scst"
    json.dumps(s)  # the JSON the report writes


def _alternate(samplers: list, trials: int = 10) -> list[tuple]:
    """Workers (one sampler each) sharing one study take turns; the points they proposed, in order."""
    storage = optuna.storages.InMemoryStorage()
    studies = [
        optuna.create_study(study_name="shared", storage=storage, sampler=s, load_if_exists=True)
        for s in samplers
    ]
    space = {"x": FloatDistribution(0.0, 1.0), "c": CategoricalDistribution(["a", "b", "c"])}
    points = []
    for i in range(trials):
        study = studies[i % len(studies)]
        trial = study.ask(space)
        study.tell(trial, trial.params["x"])
        points.append(tuple(sorted(trial.params.items())))
    return points


def test_workers_sharing_a_seeded_search_never_propose_the_same_point() -> None:
    """Two workers started with the same sampler.seed: plain samplers propose each point twice (the bug
    a 2-worker search showed); per-trial seeds give distinct points, and one worker repeats itself."""
    from hydra_plugins.captioner_optuna_sweeper.trial_seeded import TrialSeededSampler

    def tpe(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)

    plain = _alternate([tpe(0), tpe(0)])
    assert plain[0] == plain[1] and plain[2] == plain[3]
    seeded = _alternate([TrialSeededSampler(tpe, 0), TrialSeededSampler(tpe, 0)])
    assert len(set(seeded)) == len(seeded)
    alone = _alternate([TrialSeededSampler(tpe, 0)])
    assert alone == _alternate([TrialSeededSampler(tpe, 0)]) and alone[:4] == seeded[:4]


def test_search_overrides_compose_a_trial_outside_the_search() -> None:
    """`--overrides` gives the base recipe with the search's fixed settings, and the best trial on top:
    as command-line values they outrank scale=cpu's batch size, as the trial's parameters did."""
    report = _search_report()
    search = REPO / "sweeps" / "search" / "quality.yaml"
    base = REPO / "conf" / "experiment" / "quality.yaml"
    assert report.fixed_settings(search) == {"trainer.early_stop.metric": "object_f1"}
    assert report.overrides(base, search, None) == "experiment=quality trainer.early_stop.metric=object_f1"
    best = report.overrides(base, search, {"data.loader.batch_size": 16, "decoder.coverage": False})
    from captioner.cache import compose_train_config

    cfg = compose_train_config(["scale=cpu", *best.split()])
    assert cfg.data.loader.batch_size == 16 and cfg.decoder.coverage is False
    assert cfg.trainer.early_stop.metric == "object_f1" and cfg.trainer.threads == "1"
