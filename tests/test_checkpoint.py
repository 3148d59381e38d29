"""Checkpoints: exact round trip, atomic replacement, one-line errors for foreign or broken files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.cli import run_guarded
from captioner.errors import CheckpointError, DamagedCheckpointError, SaveError
from captioner.runtime import checkpoint as ckpt
from captioner.runtime.files import write_json_atomic
from captioner.train.state import load_resume

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


def damage_tensor(path: Path, tensor: torch.Tensor, n: int = 400) -> None:
    """Overwrite ``n`` bytes of ``tensor``'s storage inside the checkpoint file with 0xFF (a bad disk block)."""
    data = path.read_bytes()
    start = data.find(tensor.cpu().contiguous().numpy().tobytes())  # torch stores records uncompressed
    assert start >= 0 and tensor.nbytes > n + 8, "tensor not found in the checkpoint"
    path.write_bytes(data[: start + 8] + b"\xff" * n + data[start + 8 + n :])


def test_flipped_tensor_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    state = {"model": {"w": torch.randn(50, 20)}}
    path = tmp_path / "best.pt"
    ckpt.save_checkpoint(path, state)
    damage_tensor(path, state["model"]["w"])
    # torch.load alone reads the damaged weights without a word: the reason for the check
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], state["model"]["w"])
    with pytest.raises(DamagedCheckpointError, match="fails its CRC-32 check") as err:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_legacy_checkpoint_without_crcs_loads_with_one_warning(tmp_path: Path, capsys) -> None:
    path = tmp_path / "old.pt"
    torch.save({"format": ckpt.FORMAT, **_state()}, path, _use_new_zipfile_serialization=False)
    assert ckpt.load_checkpoint(path)["progress"] == {"epoch": 1, "best": None}
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: checkpoint {path} cannot be verified")


def test_resume_from_a_damaged_last_pt_names_the_intact_best_pt(tmp_path: Path) -> None:
    state = {"model": {"w": torch.randn(50, 20)}}
    for name in ("last.pt", "best.pt"):
        ckpt.save_checkpoint(tmp_path / name, state)
    damage_tensor(tmp_path / "last.pt", state["model"]["w"])
    with pytest.raises(DamagedCheckpointError) as err:
        load_resume(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"checkpoint {tmp_path / 'last.pt'} is damaged")
    assert message.endswith(
        f"{tmp_path / 'best.pt'} is intact: resume from it with trainer.resume={tmp_path / 'best.pt'}"
    )
    damage_tensor(tmp_path / "best.pt", state["model"]["w"])  # both damaged: no alternative to name
    with pytest.raises(DamagedCheckpointError, match="use another checkpoint .* or retrain$"):
        load_resume(str(tmp_path))


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


def test_full_disk_is_a_one_line_save_error_and_the_old_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"bleu4": 0.25})
    monkeypatch.setattr("os.fsync", _disk_full)
    with pytest.raises(SaveError) as err:
        write_json_atomic(path, {"bleu4": 0.5})
    assert str(err.value).startswith(f"cannot write {path} (No space left on device); ")
    assert "\n" not in str(err.value) and isinstance(err.value, OSError)
    monkeypatch.undo()
    assert path.read_text() == '{"bleu4": 0.25}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_a_file_where_the_folder_should_be_is_a_save_error(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(SaveError, match=f"cannot write {tmp_path / 'run' / 'last.pt'} "):
        ckpt.save_checkpoint(tmp_path / "run" / "last.pt", _state())


def test_entry_points_exit_1_with_one_line_on_a_save_error(capsys) -> None:
    def save() -> None:
        raise SaveError("cannot write runs/x/last.pt (No space left on device); ...")

    with pytest.raises(SystemExit) as exit_info:
        run_guarded(save)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: cannot write runs/x/last.pt (No space left on device); ...\n"
