"""Resume: a run SIGKILLed mid-training and resumed with only ``trainer.resume=<run>`` ends bit-identical to
an uninterrupted one, in its own folder and MLflow run; other settings are refused, more epochs applied."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import test_train
import torch
from test_train import ENV, REPO, assert_user_error, load_state, run_train, train_cmd

pytestmark = pytest.mark.slow  # three or more short trainings each
shapes_data = test_train.shapes_data  # the session's generated data (a fixture)


def _saved_progress(path: Path) -> dict:
    """The progress of a checkpoint being rewritten by another process ({} while unreadable)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return {}


def kill_when(data_dir: Path, run_dir: Path, ready: Callable[[], bool], *overrides: str) -> None:
    """Start a run and SIGKILL it as soon as ``ready()`` holds."""
    log = run_dir.parent / f"{run_dir.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            train_cmd(data_dir, run_dir, *overrides), cwd=REPO, env=ENV, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 300
        try:
            while not ready():
                assert proc.poll() is None, f"run ended before it was killed:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "run too slow"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def kill_after_epoch(data_dir: Path, run_dir: Path, epoch: int, *overrides: str) -> int:
    """Start a run, SIGKILL it once ``last.pt`` records ``epoch`` epochs; returns the epochs saved."""
    last = run_dir / "last.pt"
    kill_when(data_dir, run_dir, lambda: _saved_progress(last).get("epoch", 0) >= epoch, *overrides)
    return _saved_progress(last)["epoch"]


def resume(run_dir: Path, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python train.py trainer.resume=<run_dir> [overrides]`` from ``cwd``: Hydra composes the default config
    around it (default data, experiment and epochs), as for a user who names only the run."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"trainer.resume={run_dir}", *overrides],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def straight(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted four-epoch run (copy it before writing into it)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = run_train(shapes_data, run_dir, "trainer.epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_killed_run_resumed_by_its_folder_alone_matches_the_uninterrupted_run(
    shapes_data: Path, straight: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    saved = kill_after_epoch(shapes_data, killed, 2, "trainer.epochs=4")
    assert saved in (2, 3), f"killed after epoch {saved}: nothing left to resume"
    assert not (killed / "metrics.json").exists()
    proc = resume(killed, cwd=tmp_path)  # no other override: the checkpoint's config, not the defaults
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {killed} from last.pt (epoch {saved}/4)" in proc.stdout

    a, b = load_state(straight / "last.pt"), load_state(killed / "last.pt")
    assert a["progress"] == b["progress"]
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert a["scheduler"] == b["scheduler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Text comparison: the metrics hold NaN for undefined scores, and NaN != NaN.
    assert (straight / "metrics.json").read_text() == (killed / "metrics.json").read_text()
    # The run went on in its own folder: its log continues, no new dated folder, the first start's .hydra stays.
    log = (killed / "train.log").read_text()
    assert log.index("epoch 1/4 loss") < log.index(f"resuming {killed}") < log.index("epoch 4/4 loss")
    assert not (tmp_path / "runs").exists()
    assert "trainer.epochs=4" in (killed / ".hydra" / "overrides.yaml").read_text()


def test_resume_refuses_other_settings_extends_epochs_and_leaves_a_complete_run_as_it_is(
    straight: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    files = ("last.pt", "best.pt", "metrics.json")
    written = {name: (run / name).stat().st_mtime_ns for name in files}

    proc = resume(run, "tf=linear", "tf.k=2", cwd=tmp_path)  # refused before any data or weights load
    line = assert_user_error(
        proc,
        f"trainer.resume={run} continues a run trained with other settings",
        "tf.k: 1.0 (saved) vs 2.0 (given)",
        "tf.name: inv_sigmoid (saved) vs linear (given)",
        "may change only trainer.epochs, trainer.device, trainer.threads, logger.*",
    )
    assert "tf.epochs" not in line  # it follows trainer.epochs, which did not change
    assert_user_error(resume(run, "trainer.epochs=3", cwd=tmp_path), "trainer.epochs: 4 (saved) vs 3 (given)")

    proc = resume(run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{run} is already complete (epoch 4/4, metrics.json written); nothing to do" in proc.stdout
    assert {name: (run / name).stat().st_mtime_ns for name in files} == written

    expected = (run / "metrics.json").read_text()
    (run / "metrics.json").unlink()  # killed after its last checkpoint, before its final evaluation
    proc = resume(run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {run} (epoch 4/4): its final evaluation is left" in proc.stdout
    assert (run / "metrics.json").read_text() == expected
    assert {name: (run / name).stat().st_mtime_ns for name in files[:2]} == {n: written[n] for n in files[:2]}

    proc = resume(run, "trainer.epochs=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: trainer.epochs 4 -> 5 (from the command line)" in proc.stdout
    assert "resume: tf.epochs 4.0 -> 5.0 (follows trainer.epochs)" in proc.stdout
    assert "epoch 5/5 loss" in proc.stdout
    state = load_state(run / "last.pt")
    assert state["progress"]["epoch"] == 5 and state["config"]["trainer"]["epochs"] == 5


def test_resume_continues_the_same_mlflow_run_without_logging_a_step_twice(
    shapes_data: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from captioner.tracking import SPOOL_NAME, read_spool

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"

    def logged_past_checkpoint() -> bool:  # train.loss logged at a step the checkpoint has not reached
        spool, step = run / SPOOL_NAME, _saved_progress(run / "last.pt").get("step")
        logged = read_spool(spool).last_step.get("train.loss", -1) if spool.exists() else -1
        return step is not None and logged > step

    kill_when(shapes_data, run, logged_past_checkpoint, "logger=mlflow", f"logger.tracking_uri={uri}")
    progress = load_state(run / "last.pt")["progress"]
    assert read_spool(run / SPOOL_NAME).last_step["train.loss"] > progress["step"]  # steps to be repeated
    client = MlflowClient(tracking_uri=uri)
    assert (
        client.get_run(progress["run_id"]).info.status == "RUNNING"
    )  # a SIGKILL leaves no chance to close it

    proc = resume(run, cwd=tmp_path)  # the saved config holds the logger settings
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_state(run / "last.pt")["progress"]["run_id"] == progress["run_id"]
    experiment = client.get_experiment_by_name("shapes_smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [progress["run_id"]]
    finished = client.get_run(progress["run_id"])
    assert finished.info.status == "FINISHED"
    assert "test.bleu4" in finished.data.metrics
    assert len(client.get_metric_history(progress["run_id"], "val.bleu4")) == 2  # trainer=smoke: 2 epochs
    for key in finished.data.metrics:
        steps = [m.step for m in client.get_metric_history(progress["run_id"], key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"


def _assert_same_run(a_dir: Path, b_dir: Path) -> None:
    a, b = load_state(a_dir / "last.pt"), load_state(b_dir / "last.pt")
    a["progress"].pop("run_id"), b["progress"].pop("run_id")  # the straight run logged to MLflow
    assert a["progress"] == b["progress"]
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert (a_dir / "metrics.json").read_text() == (b_dir / "metrics.json").read_text()


@pytest.mark.parametrize("mode", ["hard", "scst"])
def test_hard_attention_and_scst_resume_exactly(mode: str, shapes_data: Path, tmp_path: Path) -> None:
    """Hard attention's sampled locations and REINFORCE baseline, and SCST's samples, continue exactly."""
    overrides = ["trainer.epochs=3", "decoder.attention=hard"]
    if mode == "scst":  # a second stage from a one-epoch XE run, small to stay fast
        xe = tmp_path / "xe"
        proc = run_train(shapes_data, xe, "trainer.epochs=1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        overrides = [
            "trainer.epochs=3",
            "objective=scst",
            f"trainer.init_from={xe / 'best.pt'}",
            "objective.samples=2",
            "objective.max_len=8",
            "objective.reward.bleu4=0.5",
        ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_train(shapes_data, straight, *overrides, "logger=mlflow", f"logger.tracking_uri={uri}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    if mode == "scst":
        from mlflow.tracking import MlflowClient

        progress = load_state(straight / "last.pt")["progress"]
        assert progress["step"] == 3 * 2  # each of the 40 training images once an epoch: 2 batches of 32
        run_id = progress["run_id"]
        logged = set(MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics)
        assert {"train.reward", "train.baseline", "train.entropy"} <= logged, sorted(logged)
    if mode == "hard":
        baseline = load_state(straight / "last.pt")["model"]["decoder.location_baseline"]
        assert baseline[1] > 0 and baseline[0] < 0  # updated: a moving average of log p(y|s,a)
    saved = kill_after_epoch(shapes_data, killed, 1, *overrides)
    assert saved in (1, 2), f"killed after epoch {saved}: nothing left to resume"
    proc = run_train(shapes_data, tmp_path / "hydra", f"trainer.resume={killed}", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(straight, killed)


def test_partial_fine_tune_on_the_cache_resumes_exactly(shapes_data: Path, tmp_path: Path) -> None:
    """Fine-tuning stage4-conv5 on cached stage3 maps, thawed mid-run (step 10, in epoch 2 of 7-step
    epochs): the tail's weights and BatchNorm statistics continue exactly after a kill."""
    overrides = [
        "trainer.epochs=3",
        "encoder.finetune=true",
        "encoder.finetune_from=stage4",
        "encoder.finetune_start_step=10",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_train(shapes_data, straight, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on cached frozen-encoder features" in proc.stdout
    saved = kill_after_epoch(shapes_data, killed, 1, *overrides)
    assert saved in (1, 2), f"killed after epoch {saved}: nothing left to resume"
    proc = run_train(shapes_data, tmp_path / "hydra", f"trainer.resume={killed}", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(straight, killed)
