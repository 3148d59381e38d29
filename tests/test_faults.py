"""Damaged checkpoints and failed saves through the real entry points: one line, the right exit status.

A damaged checkpoint is refused (status 2) by evaluate.py and by a resume, which names the run's
intact other checkpoint; a file that cannot be written (a full disk, a folder in the way) stops
train.py and evaluate.py with one line and status 1, not Hydra's traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import TINY_TRAINING, TinyRun, run_script
from test_checkpoint import damage_tensor

from captioner.runtime.checkpoint import load_checkpoint


def error_line(proc: subprocess.CompletedProcess, status: int) -> str:
    """The one ``error: ...`` line a failed entry point ends with (and no traceback)."""
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr[-3000:]
    return line


def train_tiny(tiny_run: TinyRun, *overrides: str) -> subprocess.CompletedProcess:
    """train.py with the tiny run's config, from its folder (where its data is); the status is not checked."""
    return run_script(
        "train.py", *TINY_TRAINING, "paths.data_dir=data", *overrides, cwd=tiny_run.cwd, check=False
    )


def damage_lstm(checkpoint: Path) -> None:
    """Overwrite 400 bytes of the decoder LSTM's input weights, as a bad disk block would."""
    weights = load_checkpoint(checkpoint)["model"]
    (key,) = [k for k in weights if k.startswith("decoder.lstm.weight_ih")]
    damage_tensor(checkpoint, weights[key])


def test_evaluate_refuses_a_checkpoint_with_damaged_weights(tiny_run: TinyRun, tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copy(tiny_run.checkpoint, checkpoint)
    damage_lstm(checkpoint)
    proc = run_script(
        "evaluate.py",
        f"checkpoint={checkpoint}",
        "logger=none",
        f"out={tmp_path / 'eval'}",
        cwd=tiny_run.cwd,
        check=False,
    )
    line = error_line(proc, 2)
    assert line.startswith(f"error: checkpoint {checkpoint} is damaged: record ") and "CRC-32" in line
    assert not (tmp_path / "eval").exists()  # no metrics from garbage weights


def test_resume_refuses_a_damaged_last_pt_and_names_the_intact_best_pt(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run.checkpoint.parent, run)
    damage_lstm(run / "last.pt")
    proc = train_tiny(tiny_run, f"paths.output_dir={tmp_path / 'runs'}", f"trainer.resume={run}")
    line = error_line(proc, 2)
    assert line.startswith(f"error: checkpoint {run / 'last.pt'} is damaged: ")
    assert line.endswith(f"{run / 'best.pt'} is intact: resume from it with trainer.resume={run / 'best.pt'}")
    assert not (tmp_path / "runs").exists()  # the resume made no new top-level run folder


def test_evaluate_exits_1_with_one_line_when_metrics_cannot_be_written(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    (out / "metrics.json").mkdir(parents=True)  # in the way of the rename, like a full disk it fails the save
    proc = run_script(
        "evaluate.py",
        "checkpoint=run/best.pt",
        "decode=greedy",
        "decode.max_len=8",
        "metrics=[bleu]",
        "logger=none",
        f"out={out}",
        cwd=tiny_run.cwd,
        check=False,
    )
    line = error_line(proc, 1)
    assert line.startswith(f"error: cannot write {out / 'metrics.json'} (Is a directory); ")


def test_train_exits_1_with_one_line_when_a_checkpoint_cannot_be_written(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    (run / "last.pt").mkdir(parents=True)
    proc = train_tiny(tiny_run, f"hydra.run.dir={run}")
    line = error_line(proc, 1)
    assert line.startswith(f"error: cannot write {run / 'last.pt'} (Is a directory); ")
    assert (run / "best.pt").is_file()  # what was saved before the failure is kept


def test_train_writes_its_metrics_when_the_figures_cannot_be_written(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "figures").write_text("a file in the way of the figures folder")
    proc = train_tiny(tiny_run, f"hydra.run.dir={run}", "trainer.figures=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if "attention figures skipped" in line]
    assert len(skipped) == 1 and f"cannot write {run / 'figures'}" in skipped[0], proc.stdout[-3000:]
    assert json.loads((run / "metrics.json").read_text())["test"]  # the test metrics are kept
