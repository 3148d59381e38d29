"""Checkpoints: written atomically, loadable with ``weights_only=True``, portable (no absolute paths).

A checkpoint is a plain dict of tensors and primitives: model / optimizer / scheduler / scaler
states, RNG states, epoch and step, the vocabulary and the resolved config.

Integrity: ``torch.save`` writes a zip archive whose every record (the pickle, each tensor's bytes)
carries a CRC-32, but ``torch.load`` never checks them, so a damaged tensor loads as garbage weights.
We check them on every load (``zipfile.testzip``) rather than write a SHA-256 file beside each
checkpoint: the CRCs travel inside the file (a copied ``best.pt`` stays verifiable, a stale digest
file can never disagree with a newer checkpoint, and no second rename has to stay in step with the
first), checkpoints written before this check are covered too, and a CRC-32 misses accidental damage
with odds of 2^-32 (we guard against disks and copies, not forgers: those could rewrite a digest file
as easily).
"""

from __future__ import annotations

import io
import pickle
import random
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.errors import CheckpointError, DamagedCheckpointError
from captioner.runtime.files import write_atomic

FORMAT = "captioner/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise to memory, then write to a temporary name and rename (never a half-written file)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    write_atomic(path, buf.getvalue())


def verify_checkpoint(path: str | Path) -> bool:
    """Check every record's CRC-32; True when all match, False for a file with none to check.

    A file that is not a zip archive is torch's legacy format (or truncated: ``torch.load`` says so).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every record, compares its CRC-32
    except zipfile.BadZipFile:
        return False
    if damaged is not None:
        raise DamagedCheckpointError(path, f"is damaged: record {damaged} fails its CRC-32 check")
    return True


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (verified, ``weights_only=True``), with one-line errors for the usual problems."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; check the path (runs keep best.pt and last.pt)")
    verified = verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedCheckpointError(
            path, f"is truncated, corrupt or not a captioner checkpoint ({first[:160]})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a {FORMAT} checkpoint (format={found!r}); "
            "pass a checkpoint written by captioner's train.py"
        )
    if not verified:
        print(
            f"warning: checkpoint {path} cannot be verified (torch's legacy format, without CRCs); loaded as it is",
            file=sys.stderr,
        )
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and primitives (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNGs saved by :func:`rng_state`."""
    import ast

    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(obj: Any) -> Any:
    return tuple(_to_tuple(o) for o in obj) if isinstance(obj, list | tuple) else obj
