"""Checkpoints: exact round trip, atomic replacement, one-line errors for foreign or broken files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.errors import CheckpointError
from captioner.runtime import checkpoint as ckpt

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


def _state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "progress": {"epoch": 1, "best": None},
    }


def test_round_trip_keeps_every_tensor_and_value(tmp_path: Path) -> None:
    state = _state()
    ckpt.save_checkpoint(tmp_path / "last.pt", state)
    loaded = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert loaded["format"] == ckpt.FORMAT and loaded["progress"] == state["progress"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_rng_state_round_trip_replays_every_generator(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": ckpt.rng_state()})
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_failed_write_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"progress": {"epoch": 1}})
    before = path.read_bytes()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"progress": {"epoch": 2}})
    monkeypatch.undo()
    # A write that dies after serialising (between temp file and rename) must not touch the old file either.
    monkeypatch.setattr("os.replace", disk_full)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"progress": {"epoch": 3}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["progress"]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_truncated_and_missing_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, _state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt") as err:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")


def test_torchvision_state_dict_is_not_a_captioner_checkpoint(tmp_path: Path) -> None:
    path = SHARED_WEIGHTS
    # The real file when ../shared is present; an equivalent plain state dict otherwise.
    if not path.is_file():
        path = tmp_path / "mobilenet_v2.pth"
        torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), path)
    with pytest.raises(CheckpointError, match="is not a captioner/1 checkpoint"):
        ckpt.load_checkpoint(path)
