"""One epoch of the loop: ``train_one_epoch`` (optimiser steps) and ``validate`` (score val, track the best),
torchvision's ``train_one_epoch`` and ``evaluate``; ``captioner.train.loop.train`` calls them per epoch."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

from captioner.data.prefetch import DevicePrefetcher
from captioner.data.records import ImageRecord
from captioner.errors import ConfigError
from captioner.evaluation import evaluate_split
from captioner.model.build import update_finetune
from captioner.progress import is_terminal
from captioner.progress import progress as progress_bar
from captioner.runtime.distributed import all_reduce_mean, broadcast_object
from captioner.train.divergence import RunningLoss, raise_if_diverged
from captioner.train.optim import clip_gradients
from captioner.train.run import TrainingRun, ValidationCallback

LIVE_REFRESH_S = 0.5  # a terminal's bar reads the loss (a host sync) at most this often

# ValidationCallback is imported from here (captioner.train.loop re-exports it).
__all__ = ["EpochStats", "RunPruned", "Validation", "ValidationCallback", "train_one_epoch", "validate"]


class RunPruned(Exception):
    """Raised by a ValidationCallback: stop the run after ``epoch``, it is not worth finishing (a sweep's
    pruner said so). The loop ends its MLflow run KILLED with the tags ``pruned`` and ``pruned.epoch``."""

    def __init__(self, epoch: int, reason: str) -> None:
        super().__init__(reason)
        self.epoch = epoch


@dataclass
class EpochStats:
    """What the epoch line shows of one epoch's training steps."""

    loss: float  # the loss EMA, averaged over ranks
    epsilon: float  # teacher forcing at the epoch's last step
    captions_per_s: float


def train_one_epoch(run: TrainingRun, epoch: int) -> EpochStats:
    """One epoch of optimiser steps (``trainer.accumulate`` micro-batches each) on ``run.train_model``.

    ``run.model`` is the unwrapped module (fine-tuning switch, gradient clipping). Losses are checked for
    NaN/inf at every ``trainer.log_every``-th step and at the epoch's end, where a TrainingError
    names the last good checkpoint (no checkpoint is written after a bad step).
    """
    model, train_model, objective, data = run.model, run.train_model, run.objective, run.data
    optimizer, scheduler, scaler, tf_schedule = run.optimizer, run.scheduler, run.scaler, run.tf_schedule
    progress, tracker, autocast = run.progress, run.tracker, run.autocast
    device, dist_info = run.device, run.dist_info
    t = run.cfg.trainer
    data.set_epoch(epoch)
    train_model.train()
    bar = progress_bar(
        DevicePrefetcher(data.train, device),
        desc=f"epoch {epoch + 1}/{t.epochs}",
        disable=not dist_info.is_main,
        leave=False,
    )
    # A bar redrawn on a terminal shows the loss at most every LIVE_REFRESH_S (each read is a host sync);
    # the plain-line bar of a log file shows the last log step's, and the epoch's last step's at its end.
    live, shown_at = dist_info.is_main and is_terminal(), 0.0
    meter, seen, started, started_cpu = RunningLoss(), 0, time.perf_counter(), time.process_time()
    for i, batch in enumerate(bar):
        eps = tf_schedule.epsilon(epoch + i / len(data.train))
        update_finetune(model, progress.step)
        inputs = data.inputs(batch, device)
        seen += len(batch["captions"])
        last_micro = (i + 1) % t.accumulate == 0 or i + 1 == len(data.train)
        sync = nullcontext() if last_micro or not dist_info.enabled else train_model.no_sync()
        with sync:
            with autocast:
                loss, parts = objective(train_model, inputs, batch, eps, data.cached)
            meter.add(loss, progress.step, last_micro)
            scaler.scale(loss / t.accumulate).backward()
        if not last_micro:
            continue
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(model.parameters(), t.grad_clip, t.clip_value)
        scaler.step(optimizer)  # under fp16 GradScaler skips a step with inf/NaN gradients
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step_batch()
        progress.step += 1
        log_step = progress.step % t.log_every == 0
        if log_step:  # the host reads the losses here (and on a live bar), not after every step
            meter.read()
            raise_if_diverged(meter, epoch, run.run_dir, dist_info)
        refresh = live and time.perf_counter() - shown_at >= LIVE_REFRESH_S
        if log_step or refresh or i + 1 == len(data.train):  # the closing line shows the epoch's last step
            shown_at = time.perf_counter()
            bar.set_postfix(
                **({"reward": f"{float(parts['reward']):.3f}"} if "reward" in parts else {}),
                loss=f"{meter.read():.3f}",
                eps=f"{eps:.2f}",
                cap_s=f"{seen / (time.perf_counter() - started):.0f}",
            )
        if log_step:
            lrs = {f"lr.{g.get('name', j)}": g["lr"] for j, g in enumerate(optimizer.param_groups)}
            tracker.log_metrics(
                {
                    "train.loss": meter.last,
                    **{f"train.{k}": float(v) for k, v in parts.items()},
                    "train.epsilon": eps,
                    "train.grad_norm": None if grad_norm is None else float(grad_norm),
                    **lrs,
                },
                step=progress.step,
            )
    meter.read()
    raise_if_diverged(meter, epoch, run.run_dir, dist_info)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    # Wall and CPU time of the epoch's training steps (not validation, not the feature cache): what the
    # seed's speed claims compare (bucket sampler, fine-tuning). CPU time barely moves when other jobs
    # share the machine; wall time does. MLflow only: metrics.json stays deterministic.
    tracker.log_metrics(
        {"time.epoch_train_s": seconds, "time.epoch_train_cpu_s": cpu_seconds}, step=progress.step
    )
    return EpochStats(all_reduce_mean(meter.value, dist_info), eps, seen / seconds)


@dataclass
class Validation:
    """One validation's outcome for the loop: a new best?, stop early?, and its part of the epoch line."""

    improved: bool
    stop: bool
    line: str


def validate(run: TrainingRun) -> Validation:
    """Score the val split, step a plateau LR schedule, update best and patience in ``run.progress``, log."""
    progress, records, tracker, dist_info = run.progress, run.records, run.tracker, run.dist_info
    t = run.cfg.trainer
    result = evaluate_split(
        run.model,
        run.data.eval["val"],
        run.vocab,
        records,
        run.cfg.decode,
        run.device,
        dist_info,
        run.autocast,
        keep_alphas=None if _has_ground_truth(records) else 0,
    )
    metric = broadcast_object(result.metrics.get(t.early_stop.metric), dist_info)
    if metric is None:
        raise ConfigError(
            f"trainer.early_stop.metric={t.early_stop.metric!r} is not computed; "
            f"choose one of {sorted(result.metrics)}"
        )
    run.scheduler.step_validation(metric)
    improved = progress.best is None or (
        metric > progress.best if t.early_stop.mode == "max" else metric < progress.best
    )
    if improved:
        progress.best, progress.best_epoch, progress.bad_validations = metric, progress.epoch, 0
    else:
        progress.bad_validations += 1
    stop = progress.stopped_early(t.early_stop.patience)
    tracker.log_metrics({f"val.{k}": v for k, v in result.metrics.items()}, step=progress.step)
    if improved:  # the best validation as numbers the MLflow UI can sort and compare
        best = {f"best.{k}": v for k, v in result.metrics.items()}
        tracker.log_metrics({**best, "best.epoch": progress.epoch}, step=progress.step)
    if run.on_validation is not None:
        run.on_validation(metric, progress.epoch)
    shown = {k: result.metrics[k] for k in ("bleu4", "cider_d", "object_f1") if k in result.metrics}
    line = " | val " + " ".join(f"{k} {v:.3g}" for k, v in shown.items())
    line += " (best)" if improved else f" (best {progress.best:.3g} @ {progress.best_epoch})"
    return Validation(improved, stop, line)


def _has_ground_truth(records: dict[str, ImageRecord]) -> bool:
    return any("objects" in r.meta for r in records.values())
