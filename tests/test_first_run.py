"""What a newcomer sees: plain log output when piped, epoch lines in train.log, fast offline weight errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import test_train
from test_train import ENV, REPO, assert_user_error, run_train

from captioner.ui import option

shapes_data = test_train.shapes_data  # the session's generated data (a fixture)


def test_piped_run_prints_plain_lines_and_train_log_holds_the_epochs(shapes_data: Path, tmp_path: Path):
    proc = run_train(shapes_data, tmp_path / "run", "trainer.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    # No carriage-return redraws when the output is a file (CI, SLURM, nohup): whole lines only.
    assert "\r" not in out
    assert len(out.splitlines()) < 100, out
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch 2/2 loss")]
    assert len(epoch_lines) == 1 and "teacher forcing" in epoch_lines[0], proc.stdout
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 1/2 loss" in log and "epoch 2/2 loss" in log and "test:" in log


def test_frozen_random_encoder_is_warned_about_in_one_line(shapes_data: Path, tmp_path: Path):
    proc = run_train(
        shapes_data, tmp_path / "run", "trainer.epochs=1"
    )  # fast_overrides: pretrained=false, frozen
    warnings = [
        line for line in proc.stdout.splitlines() if line.startswith("warning: encoder.pretrained=false")
    ]
    assert len(warnings) == 1 and "encoder.finetune=true" in warnings[0]


def test_missing_weights_fail_before_any_data_is_generated(tmp_path: Path):
    env = {
        **ENV,
        "TORCH_HOME": str(tmp_path / "torch"),  # an empty cache
        "https_proxy": "http://127.0.0.1:9",  # and no way out, even where the machine has a network
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "encoder=shufflenet",
            "tf=inv_sigmoid",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "logger=none",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    line = assert_user_error(proc, "encoder.arch=shufflenet", "encoder=mobilenet_v2", "encoder.finetune=true")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "data").exists(), "data was generated before the weights were checked"
    assert elapsed < 60, f"took {elapsed:.0f} s"  # ~4 s on an idle machine; generous for a shared one
    assert "make weights" in line


def test_ui_options_default_to_loopback():
    assert option(["--port", "5001"], "--port", "5000") == "5001"
    assert option([], "--host", "127.0.0.1") == "127.0.0.1"
