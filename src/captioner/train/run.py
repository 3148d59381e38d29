"""``TrainingRun``: what ``captioner.train.loop.train`` builds once and every epoch shares.

torchvision's ``train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args)`` passes its
handful of objects one by one; ours number fifteen, so they travel together in one object.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from captioner.data.pipeline import Data
from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocab
from captioner.runtime.distributed import DistInfo
from captioner.train.schedulers import LRSchedule
from captioner.train.state import Progress
from captioner.train.teacher_forcing import TeacherForcingSchedule

# Called after each validation with (metric, epoch); the entry point passes the sweep's pruning
# report here, so the loop never imports the sweeper. It raises RunPruned to stop the run.
ValidationCallback = Callable[[float, int], None]


@dataclass
class TrainingRun:
    """One training run's parts, built once before the first epoch (``loop.build_run``).

    ``model`` is the unwrapped Captioner (fine-tuning switch, gradient clipping, checkpoints, evaluation);
    ``train_model`` is what the optimiser steps through (DDP under torchrun, then ``torch.compile``).
    ``progress`` is the one mutable part: the loop and ``validate`` advance its counters.
    """

    cfg: DictConfig
    config: dict[str, Any]  # cfg resolved: config.json, MLflow's params, every checkpoint's "config"
    run_dir: Path
    device: torch.device
    dist_info: DistInfo
    autocast: AbstractContextManager  # entered around every forward pass
    vocab: Vocab
    records: dict[str, ImageRecord]
    data: Data
    model: torch.nn.Module
    train_model: torch.nn.Module
    objective: Callable[..., tuple[Tensor, dict[str, Tensor]]]  # captioner.train.objective
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule  # the LR schedule (steps per batch, epoch or validation)
    tf_schedule: TeacherForcingSchedule  # epsilon per (fractional) epoch
    scaler: torch.amp.GradScaler
    progress: Progress
    tracker: Any  # captioner.tracking's MLflow run, or its no-op stand-in
    on_validation: ValidationCallback | None = None
