"""The loss read at log steps only: the same EMA as a per-step ``.item()``, and NaN still caught."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from captioner.runtime.distributed import SINGLE
from captioner.train.divergence import RunningLoss, raise_if_diverged, raise_if_weights_diverged
from captioner.train.loop import TrainingError


def _per_step_ema(losses: list[torch.Tensor]) -> float:
    """What the loop computed before: ``.item()`` after every optimiser step."""
    running = 0.0
    for loss in losses:
        running = 0.9 * running + 0.1 * loss.item() if running else loss.item()
    return running


def test_deferred_reads_give_the_per_step_ema_bit_for_bit() -> None:
    torch.manual_seed(0)
    losses = [torch.rand((), dtype=dtype) * 5 for dtype in [torch.float32] * 23 + [torch.bfloat16] * 3]
    meter = RunningLoss()
    for step, loss in enumerate(losses):
        meter.add(loss * 2, step, optimiser_step=False)  # a micro-batch before the step: not in the EMA
        meter.add(loss, step, optimiser_step=True)
        if step % 5 == 4:  # log_every=5
            assert meter.read() == _per_step_ema(losses[: step + 1])
    assert meter.read() == _per_step_ema(losses)
    assert meter.last == losses[-1].item()
    assert meter.bad is None


def test_a_non_finite_micro_batch_is_named_with_its_step(tmp_path: Path) -> None:
    meter = RunningLoss()
    meter.add(torch.tensor(2.0), 10, optimiser_step=True)
    meter.add(torch.tensor(math.inf), 11, optimiser_step=False)
    meter.add(torch.tensor(math.nan), 11, optimiser_step=True)
    assert meter.read() == 2.0
    assert meter.bad == (math.inf, 11)
    with pytest.raises(TrainingError, match=r"loss became inf at epoch 3, step 11; .*last\.pt"):
        raise_if_diverged(meter, 2, tmp_path, SINGLE)


def test_non_finite_weights_raise_instead_of_being_saved(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    raise_if_weights_diverged(model, 0, tmp_path)
    with torch.no_grad():
        model.bias[0] = math.nan
    with pytest.raises(TrainingError, match="weights became non-finite in epoch 1"):
        raise_if_weights_diverged(model, 0, tmp_path)
