"""Catching divergence: the loss read from the device at log steps only, and a one-line TrainingError
naming the last good checkpoint instead of a checkpoint with NaN weights."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from captioner.errors import CaptionerError
from captioner.runtime.distributed import DistInfo, gather_objects

FIX_DIVERGENCE = "lower the learning rates (optimizer.decoder_lr) or clip gradients (trainer.grad_clip=norm)"


class TrainingError(CaptionerError):
    """Training cannot go on (a non-finite loss or weights); the message names the last good checkpoint."""


class RunningLoss:
    """The epoch's loss EMA (bar and epoch line), read from the device only when asked.

    A per-step ``loss.item()`` stalls the host until the GPU catches up; like nanoGPT we read at log
    steps: each micro-batch's detached loss is queued, and ``read`` copies the queue in one transfer
    and folds it in step order, in Python floats, exactly as a per-step ``.item()`` did, so the epoch
    line is unchanged. The first non-finite loss is kept in ``bad`` as (value, step).
    """

    def __init__(self) -> None:
        self.value = 0.0  # the EMA over optimiser steps' losses (0.0 = none yet)
        self.last = math.nan  # the latest optimiser step's loss
        self.bad: tuple[float, int] | None = None
        self._queue: list[tuple[Tensor, int, bool]] = []

    def add(self, loss: Tensor, step: int, optimiser_step: bool) -> None:
        """Queue a micro-batch's loss; only an optimiser step's (last micro-batch's) loss enters the EMA."""
        self._queue.append((loss.detach(), step, optimiser_step))

    def read(self) -> float:
        """The EMA after folding in the queued losses (one host sync)."""
        if self._queue and self.bad is None:
            values = torch.stack([loss.float() for loss, _, _ in self._queue]).tolist()
            for value, (_, step, counts) in zip(values, self._queue):
                if not math.isfinite(value):
                    self.bad = (value, step)
                    break
                if counts:
                    self.value = 0.9 * self.value + 0.1 * value if self.value else value
                    self.last = value
        self._queue.clear()
        return self.value


def raise_if_diverged(meter: RunningLoss, epoch: int, run_dir: Path, dist_info: DistInfo) -> None:
    """TrainingError on every rank when any rank saw a non-finite loss (a collective under DDP)."""
    bad = next((b for b in gather_objects(meter.bad, dist_info) if b is not None), None)
    if bad is not None:
        value, step = bad
        raise TrainingError(
            f"loss became {value} at epoch {epoch + 1}, step {step}; the last good checkpoint is "
            f"{run_dir / 'last.pt'}; {FIX_DIVERGENCE}"
        )


def raise_if_weights_diverged(model: torch.nn.Module, epoch: int, run_dir: Path) -> None:
    """TrainingError rather than a checkpoint with non-finite weights (DDP ranks hold equal weights)."""
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    if not finite:
        raise TrainingError(
            f"the weights became non-finite in epoch {epoch + 1}; the last good checkpoint is "
            f"{run_dir / 'last.pt'}; {FIX_DIVERGENCE}"
        )
