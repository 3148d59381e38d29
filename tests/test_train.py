"""train.py end to end on a tiny shapes set: a run's outputs, and one-line errors for bad input.

The helpers here (``run_train``, the ``shapes_data`` fixture) are reused by test_resume.py and
test_ddp.py; the data is generated once per session under pytest's base temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from captioner.data.annotations import read_annotations
from captioner.data.records import MANIFEST

REPO = Path(__file__).resolve().parents[1]
# One thread per process: the test machine's cores are shared, and threads only add contention here.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = {"n_train": 40, "n_val": 8, "n_test": 8, "n_test_novel": 0}


def fast_overrides(data_dir: Path, run_dir: Path) -> list[str]:
    """The cheapest end-to-end training: 40 shapes images, a small decoder on cached features."""
    return [
        "data=shapes_smoke",
        "trainer=smoke",
        "logger=none",
        "encoder=shufflenet_v2_x0_5",
        "encoder.pretrained=false",
        "decoder=small",
        "decode=greedy",
        "trainer.device=cpu",
        "trainer.figures=0",
        *(f"data.prepare.{k}={v}" for k, v in SMALL.items()),
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    ]


def train_cmd(data_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    """The ``python train.py ...`` command line of a fast run (later overrides win)."""
    return [sys.executable, "train.py", *fast_overrides(data_dir, run_dir), *overrides]


def run_train(
    data_dir: Path, run_dir: Path, *overrides: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run train.py to its end and return the finished process (stdout and stderr captured)."""
    return subprocess.run(
        train_cmd(data_dir, run_dir, *overrides),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python train.py args...`` with no fast defaults (for config errors)."""
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, the last stderr line is ``error: ...`` naming every fragment, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    # splitlines also cuts at tqdm's carriage returns, so the error line stands alone.
    line = proc.stderr.strip().splitlines()[-1].strip()
    assert line.startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in proc.stderr
    return line


def load_state(path: Path) -> dict:
    """A checkpoint as train.py wrote it."""
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``paths.data_dir`` holding the tiny shapes set (generated once per session, shared by files)."""
    from captioner.data.prepare import prepare_dataset

    data_dir = tmp_path_factory.getbasetemp() / "train_data"
    root = data_dir / "shapes_smoke"
    if not (root / MANIFEST).exists():
        prepare = OmegaConf.to_container(OmegaConf.load(REPO / "conf/data/shapes_smoke.yaml").prepare)
        prepare_dataset(out=root, **{**prepare, **SMALL})
    return data_dir


@pytest.fixture(scope="session")
def trained_run(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished two-epoch run (do not write into it: copy it first)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    proc = run_train(shapes_data, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir.parent / "stdout.txt").write_text(proc.stdout)
    return run_dir


def test_run_writes_checkpoints_config_and_metrics(trained_run: Path) -> None:
    for name in ("last.pt", "best.pt", "config.json", "metrics.json"):
        assert (trained_run / name).is_file(), name
    state = load_state(trained_run / "last.pt")
    assert state["progress"]["epoch"] == 2
    assert state["progress"]["step"] == 2 * 7  # 40 images x 5 captions in batches of 32
    assert state["format"] == "captioner/1" and state["vocab"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["objective_metric"] == "bleu4" and metrics["best_epoch"] in (1, 2)
    assert {"bleu4", "meteor", "cider_d", "object_f1"} <= set(metrics["test"])
    config = json.loads((trained_run / "config.json").read_text())
    assert config["trainer"]["epochs"] == 2 and config["encoder"]["arch"] == "shufflenet_v2_x0_5"


def test_test_metrics_choose_the_final_evaluations_text_metrics(shapes_data: Path, tmp_path: Path) -> None:
    # The seed sweeps at scale=cpu leave METEOR (a Java process a split) out of the final evaluation.
    proc = run_train(shapes_data, tmp_path / "run", "trainer.epochs=1", "trainer.test_metrics=[bleu,cider_d]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert {"bleu4", "cider_d", "object_f1"} <= set(test) and not {"meteor", "rouge_l"} & set(test)
    from captioner.config import TEST_METRICS
    from captioner.metrics.text import DEFAULT_METRICS

    assert TEST_METRICS == DEFAULT_METRICS  # the config's default is the scorers' own


def test_run_prints_generated_captions_next_to_a_reference(trained_run: Path, shapes_data: Path) -> None:
    stdout = (trained_run.parent / "stdout.txt").read_text()
    samples = [line for line in stdout.splitlines() if line.startswith("shapes_test_")]
    assert len(samples) == 3
    records = {r.id: r for r in read_annotations(shapes_data / "shapes_smoke")}
    for line in samples:
        image_id, rest = line.split("  gen: ")
        generated, reference = rest.split("  | ref: ")
        assert generated.strip() and reference == " ".join(records[image_id].tokens[0])


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("optimizer.decoder_lr=-1", ["decoder_lr", "-1"]),
        ("scheduler=nope", ["scheduler=nope", "cosine", "onecycle"]),
        ("tf=linear tf.floor=1.5", ["floor", "1.5"]),
        ("trainer.early_stop.metric=blue4", ["trainer.early_stop.metric='blue4'", "bleu4", "object_f1"]),
        ("trainer.test_metrics=[bleu,meteorr]", ["trainer.test_metrics", "meteorr", "spice"]),
    ],
)
def test_bad_config_value_is_one_line_error(override: str, fragments: list[str], tmp_path: Path) -> None:
    proc = run_train(tmp_path / "data", tmp_path / "run", *override.split())
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "data").exists(), "nothing is generated before the config is checked"


def test_missing_prepared_data_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    proc = run_script(
        "data=flickr8k",
        "logger=none",
        f"paths.data_dir={tmp_path / 'empty'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_user_error(proc, str(tmp_path / "empty" / "flickr8k"), "captioner.prepare data=flickr8k")


def test_truncated_checkpoint_on_resume_is_one_line_error(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    data = (trained_run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    proc = run_train(tmp_path / "data", tmp_path / "run", f"trainer.resume={run}")
    assert_user_error(proc, str(run / "last.pt"), "truncated")


# The loss is read from the device at log steps only: a NaN is caught at the next log step
# (log_every=5, mid-epoch) or at the epoch's end (log_every=1000), never after a checkpoint of it.
@pytest.mark.parametrize("log_every", [5, 1000])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    shapes_data: Path, trained_run: Path, tmp_path: Path, log_every: int
) -> None:
    from captioner.runtime.checkpoint import save_checkpoint

    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    # Resume restores the optimiser's learning rates and the run's config (which a resume may not change),
    # so the checkpoint itself carries the absurd loss weight that blows the loss up.
    state = load_state(run / "last.pt")
    state["config"]["trainer"].update(att_gamma=1e39, log_every=log_every)
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k != "format"})
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    proc = run_script(f"trainer.resume={run}", "trainer.epochs=3", timeout=300)
    line = assert_user_error(proc, "loss became", "epoch 3", str(run / "last.pt"))
    assert "inf" in line or "nan" in line
    assert {name: (run / name).read_bytes() for name in before} == before
    assert load_state(run / "last.pt")["progress"]["epoch"] == 2


@pytest.mark.slow  # a training that waits FINISH_GRACE_S for the dead server at its end
def test_unreachable_tracking_server_does_not_stop_training(shapes_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_train(shapes_data, run, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all((run / name).is_file() for name in ("last.pt", "best.pt", "config.json", "metrics.json"))
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 2, warnings  # the outage, then where the records are and how to send them
    assert "http://127.0.0.1:9 failed (connection refused)" in warnings[0]
    assert warnings[1].endswith(f"python -m captioner.tracking sync {run}")
    assert "Traceback" not in proc.stderr
