"""LR schedules with linear warm-up, built from the ``scheduler`` config group.

Units at which each schedule steps (the loop calls all three hooks; each schedule reacts to its own):

- batch (``LRSchedule.step_batch`` after every optimiser step): ``cosine``, ``onecycle`` and the warm-up;
- epoch (``LRSchedule.step_epoch`` at the end of every epoch): ``exp``, ``step``;
- validation (``LRSchedule.step_validation(bleu4)`` after every validation): ``plateau``.
"""

import math
from collections.abc import Callable

import torch
from torch.optim import lr_scheduler

from captioner.errors import CheckpointError, require

SCHEDULERS = ("none", "plateau", "cosine", "exp", "step", "onecycle")


def _cycle_lengths(total_steps: int, steps_per_epoch: int, n_cycles: int, cycle_mult: float) -> list[int]:
    """Cycle lengths in steps, each ``cycle_mult`` times the last, summing exactly to ``total_steps``.

    Boundaries are rounded to whole epochs when every cycle can span at least one, so the validation at
    the end of each cycle sees the model at that cycle's minimum rate. ``n_cycles`` is an upper bound: a
    run too short for every cycle to last 2 steps (a smoke run) gets the most cycles that fit.
    """
    for n in range(n_cycles, 0, -1):
        weights = [cycle_mult**i for i in range(n)]
        cum = [sum(weights[: i + 1]) / sum(weights) for i in range(n)]
        whole_epochs = total_steps % steps_per_epoch == 0 and total_steps // steps_per_epoch >= n
        unit = steps_per_epoch if whole_epochs else 1
        bounds = [0] + [round(c * total_steps / unit) * unit for c in cum[:-1]] + [total_steps]
        lengths = [b - a for a, b in zip(bounds, bounds[1:])]
        if min(lengths) >= 2:
            return lengths
    return [total_steps]


def _cosine_restarts(lengths: list[int], min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier at step s: each cycle falls from 1 at its first step to ``min_lr_ratio`` at its last.

    Hand-written instead of torch's CosineAnnealingWarmRestarts, which only has integer cycle growth and
    never reaches eta_min on a cycle's last step (the seed's run ended training at a high LR).
    """

    def multiplier(step: int) -> float:
        for length in lengths:
            if length == 1:  # a one-step run trains at the minimum: training always ends there
                return min_lr_ratio
            if step < length:
                cos = 0.5 * (1.0 + math.cos(math.pi * step / (length - 1)))
                return min_lr_ratio + (1.0 - min_lr_ratio) * cos
            step -= length
        return min_lr_ratio  # past the planned steps: stay at the minimum

    return multiplier


class LRSchedule:
    """One learning-rate schedule (see module docstring for units) times a linear warm-up.

    The warm-up multiplies the rate of batch s (0-based) by min(1, (s + 1) / warmup_steps) on top of any
    schedule. The wrapped torch scheduler always sees the un-warmed rate, so chained schedules (exp,
    plateau) do not compound the warm-up factor.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        scheduler: lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None,
        unit: str,
        total_steps: int,
        warmup_steps: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.name = name
        self.scheduler = scheduler
        self.unit = unit  # "batch", "epoch", "validation" or "none": which hook steps `scheduler`
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.batch_step = 0
        self._lrs = [g["lr"] for g in optimizer.param_groups]  # un-warmed rates
        self._apply()

    def _warmup(self) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.batch_step + 1) / self.warmup_steps)

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self._lrs):
            group["lr"] = lr * self._warmup()

    def _step_inner(self, *args: float) -> None:
        for group, lr in zip(self.optimizer.param_groups, self._lrs):
            group["lr"] = lr
        self.scheduler.step(*args)
        self._lrs = [g["lr"] for g in self.optimizer.param_groups]

    def step_batch(self) -> None:
        """Call after every optimiser step: advances the warm-up and per-batch schedules."""
        self.batch_step += 1
        # Past the planned steps the rate stays at its final value (OneCycleLR would raise).
        if self.unit == "batch" and self.batch_step < self.total_steps:
            self._step_inner()
        self._apply()

    def step_epoch(self) -> None:
        """Call at the end of every epoch: advances per-epoch schedules (exp, step)."""
        if self.unit == "epoch":
            self._step_inner()
            self._apply()

    def step_validation(self, metric: float) -> None:
        """Call after every validation with the early-stop metric: advances ``plateau``."""
        if self.unit == "validation":
            self._step_inner(float(metric))
            self._apply()

    def get_last_lr(self) -> list[float]:
        """Current rate of every param group (warm-up included), in group order."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Everything needed to resume the exact LR sequence (save next to the optimiser state)."""
        return {
            "name": self.name,
            "batch_step": self.batch_step,
            "lrs": list(self._lrs),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; the schedule must have been built with the same config."""
        if state.get("name") != self.name or len(state.get("lrs", ())) != len(self._lrs):
            raise CheckpointError(
                f"checkpoint LR schedule {state.get('name')!r} with {len(state.get('lrs', ()))} groups does not "
                f"match scheduler.name={self.name!r} with {len(self._lrs)} groups; resume with the run's config"
            )
        self.batch_step = state["batch_step"]
        self._lrs = list(state["lrs"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self._apply()


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    steps_per_epoch: int,
    metric_mode: str = "max",
    warmup_steps: int = 0,
    min_lr_ratio: float = 1e-3,
    factor: float = 0.5,
    patience: int = 2,
    gamma: float = 0.9,
    step_size: int = 1,
    n_cycles: int = 1,
    cycle_mult: float = 2.0,
    pct_start: float = 0.3,
) -> LRSchedule:
    """LR schedule from the ``scheduler`` config group; the loop passes the optimiser and step counts.

    - ``none``: constant rate (warm-up still applies).
    - ``plateau``: ReduceLROnPlateau on the validation metric (``metric_mode``: trainer.early_stop.mode): multiply by ``factor`` after
      ``patience`` validations without improvement, never below base * ``min_lr_ratio``.
    - ``cosine``: cosine annealing with warm restarts; up to ``n_cycles`` cycles (fewer if a cycle would
      last under 2 steps), each ``cycle_mult`` times longer than the last, fitted to sum to ``total_steps``
      so training ends exactly at base * ``min_lr_ratio`` (default 1e-3: the seed's "at least 1000 times
      less at the end").
    - ``exp``: multiply by ``gamma`` every epoch. ``step``: multiply by ``gamma`` every ``step_size`` epochs.
    - ``onecycle``: torch OneCycleLR over ``total_steps`` with the group rates as peaks, ``pct_start`` of
      the steps rising, ending at peak * ``min_lr_ratio``.
    """
    require(name in SCHEDULERS, f"scheduler.name={name!r} is unknown; use one of {', '.join(SCHEDULERS)}")
    require(
        total_steps >= 1, f"total_steps={total_steps} must be >= 1; check trainer.epochs and the data size"
    )
    require(steps_per_epoch >= 1, f"steps_per_epoch={steps_per_epoch} must be >= 1; check the batch size")
    require(warmup_steps >= 0, f"scheduler.warmup_steps={warmup_steps} must be >= 0; use e.g. 100")
    require(0 < min_lr_ratio < 1, f"scheduler.min_lr_ratio={min_lr_ratio} must be in (0, 1); use e.g. 1e-3")
    require(0 < factor < 1, f"scheduler.factor={factor} must be in (0, 1); use e.g. 0.5")
    require(patience >= 0, f"scheduler.patience={patience} must be >= 0; use e.g. 2")
    require(0 < gamma <= 1, f"scheduler.gamma={gamma} must be in (0, 1]; use e.g. 0.9")
    require(step_size >= 1, f"scheduler.step_size={step_size} must be >= 1 epoch; use e.g. 3")
    require(n_cycles >= 1, f"scheduler.n_cycles={n_cycles} must be >= 1; use e.g. 3")
    require(cycle_mult > 0, f"scheduler.cycle_mult={cycle_mult} must be > 0; use e.g. 2.0")
    require(0 < pct_start < 1, f"scheduler.pct_start={pct_start} must be in (0, 1); use e.g. 0.3")
    base = [g["lr"] for g in optimizer.param_groups]
    if name == "none":
        return LRSchedule(optimizer, name, None, "none", total_steps, warmup_steps)
    if name == "plateau":
        sched = lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=metric_mode,
            factor=factor,
            patience=patience,
            min_lr=[b * min_lr_ratio for b in base],
        )
        return LRSchedule(optimizer, name, sched, "validation", total_steps, warmup_steps)
    if name == "cosine":
        multiplier = _cosine_restarts(
            _cycle_lengths(total_steps, steps_per_epoch, n_cycles, cycle_mult), min_lr_ratio
        )
        return LRSchedule(
            optimizer, name, lr_scheduler.LambdaLR(optimizer, multiplier), "batch", total_steps, warmup_steps
        )
    if name == "onecycle":
        div_factor = 25.0  # torch's default start at peak / 25
        sched = lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=base,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=1.0 / (min_lr_ratio * div_factor),
        )
        return LRSchedule(optimizer, name, sched, "batch", total_steps, warmup_steps)
    if name == "exp":
        return LRSchedule(
            optimizer, name, lr_scheduler.ExponentialLR(optimizer, gamma), "epoch", total_steps, warmup_steps
        )
    sched = lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    return LRSchedule(optimizer, name, sched, "epoch", total_steps, warmup_steps)
