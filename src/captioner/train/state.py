"""What a run carries across a restart: its counters, its checkpoint dict, the checkpoint it resumes, seeds."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.data.vocab import Vocab
from captioner.errors import DamagedCheckpointError
from captioner.runtime import checkpoint as ckpt


@dataclass
class Progress:
    """Loop counters saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0
    run_id: str | None = None

    def stopped_early(self, patience: int) -> bool:
        """``patience`` validations in a row brought no improvement (0: never stop early)."""
        return patience > 0 and self.bad_validations >= patience


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, world_size: int, step: int = 0) -> int:
    """The seed of DDP rank ``rank``'s own draws (dropout, scheduled sampling) from optimiser step ``step``.

    nanoGPT's ``seed_offset``: ``seed + rank`` at the start, so ranks do not repeat each other's
    dropout masks. A resumed run restores rank 0's saved RNG state; the other ranks' states are not
    saved, so they re-seed with ``world_size * step`` added (distinct per rank and per resume point,
    never replaying the first epoch's draws).
    """
    return seed + rank + world_size * step


def checkpoint_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    vocab: Vocab,
    resolved: dict,
) -> dict[str, Any]:
    """Everything needed to continue exactly, or to caption with no other file."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": ckpt.rng_state(),
        "progress": asdict(progress),
        "vocab": vocab.itos,
        "config": resolved,
    }


def resume_checkpoint(resume: str) -> Path:
    """The checkpoint ``trainer.resume`` names: a checkpoint file, or a run folder's ``last.pt``."""
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def load_resume(resume: str) -> dict[str, Any]:
    """Load the checkpoint ``trainer.resume`` names (:func:`resume_checkpoint`); when it is damaged, the
    error names the run's other checkpoint (last.pt <-> best.pt) if that one verifies."""
    path = resume_checkpoint(resume)
    try:
        return ckpt.load_checkpoint(path)
    except DamagedCheckpointError as err:
        other = path.with_name("best.pt" if path.name == "last.pt" else "last.pt")
        if not other.is_file() or not _intact(other):
            raise
        raise DamagedCheckpointError(
            path, err.problem, f"{other} is intact: resume from it with trainer.resume={other}"
        ) from err


def _intact(path: Path) -> bool:
    try:
        return ckpt.verify_checkpoint(path)
    except DamagedCheckpointError:
        return False
