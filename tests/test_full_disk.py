"""A really full disk (a tiny tmpfs, filled up) while writing figures and exports: one line, nothing half-written.

Checkpoints, metrics.json and config.json go through the same ``open_atomic`` (tests/test_checkpoint.py and
tests/test_faults.py); here the writers that used to call their library's own save: matplotlib's figure,
Pillow's palette PNG and ``torch.export.save``. Mounting needs root (CI has it); elsewhere these skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyRun

from captioner.errors import SaveError
from captioner.export import main as export_main
from captioner.viz import attention_figure


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs with a file that takes all of it, and an earlier file ``kept.bin`` on it."""
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    try:
        (mount / "kept.bin").write_bytes(b"x" * 1000)
        with open(mount / "filler", "wb", buffering=0) as f:
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError:
                pass  # the disk is full
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_an_attention_figure_on_a_full_disk_is_one_line_and_leaves_no_file(full_disk: Path) -> None:
    path = full_disk / "figures" / "a.png"
    with pytest.raises(SaveError) as err:
        attention_figure(np.zeros((32, 32, 3), np.uint8), ["a", "b"], torch.rand(2, 4), (2, 2), path)
    assert str(err.value).startswith(f"cannot write {path} (No space left on device); ")
    assert "\n" not in str(err.value)
    assert not path.exists() and sorted(p.name for p in full_disk.rglob("*") if p.is_file()) == [
        "filler",
        "kept.bin",
    ]
    assert (full_disk / "kept.bin").read_bytes() == b"x" * 1000


def test_export_on_a_full_disk_exits_1_and_keeps_the_earlier_export(
    tiny_run: TinyRun, full_disk: Path, capsys: pytest.CaptureFixture
) -> None:
    out = full_disk / "kept.bin"  # an earlier export at the same name
    assert export_main([f"checkpoint={tiny_run.checkpoint}", f"out={out}", "max_len=6"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out} (No space left on device); ")
    assert out.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "kept.bin"]


@pytest.mark.slow  # creating an MLflow SQLite store runs its migrations (seconds)
def test_a_full_disk_under_the_spool_warns_once_and_mlflow_still_gets_every_metric(
    full_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    from captioner.tracking import build_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = build_tracker(True, uri, "full", "spool", {"a": 1}, run_dir=full_disk / "run")
    tracker.log_metrics({"loss": 2.0}, step=1)
    tracker.log_metrics({"loss": 1.0}, step=2)
    tracker.finish()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tracking_spool.jsonl" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")] == [
        (1, 2.0),
        (2, 1.0),
    ]
