"""Exact resume: a run SIGKILLed mid-training and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_train
import torch
from test_train import ENV, REPO, load_state, run_train, train_cmd

pytestmark = pytest.mark.slow  # three or more short trainings each
shapes_data = test_train.shapes_data  # the session's generated data (a fixture)


def _epochs_done(path: Path) -> int:
    """Epochs recorded in a checkpoint being rewritten by another process (0 while unreadable)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]["epoch"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def kill_after_epoch(data_dir: Path, run_dir: Path, epoch: int, *overrides: str) -> int:
    """Start a run, SIGKILL it once ``last.pt`` records ``epoch`` epochs; returns the epochs saved."""
    log = run_dir.parent / f"{run_dir.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            train_cmd(data_dir, run_dir, *overrides), cwd=REPO, env=ENV, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 300
        try:
            while _epochs_done(run_dir / "last.pt") < epoch:
                assert proc.poll() is None, f"run ended before epoch {epoch}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "run too slow"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _epochs_done(run_dir / "last.pt")


def test_killed_and_resumed_run_matches_uninterrupted_run(shapes_data: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_train(shapes_data, straight, "trainer.epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]

    saved = kill_after_epoch(shapes_data, killed, 2, "trainer.epochs=4")
    assert saved in (2, 3), f"killed after epoch {saved}: nothing left to resume"
    assert not (killed / "metrics.json").exists()
    proc = run_train(shapes_data, tmp_path / "hydra", f"trainer.resume={killed}", "trainer.epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]

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


def test_resume_continues_the_same_mlflow_run(shapes_data: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    logging = ["logger=mlflow", f"logger.tracking_uri={uri}", "trainer.epochs=3"]
    kill_after_epoch(shapes_data, run, 1, *logging)
    run_id = load_state(run / "last.pt")["progress"]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # a SIGKILL leaves no chance to close it

    proc = run_train(shapes_data, tmp_path / "hydra", f"trainer.resume={run}", *logging)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_state(run / "last.pt")["progress"]["run_id"] == run_id
    experiment = client.get_experiment_by_name("shapes_smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert "test.bleu4" in finished.data.metrics
    assert len(client.get_metric_history(run_id, "val.bleu4")) >= 3


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
