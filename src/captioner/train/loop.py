"""The training run top to bottom, torchvision's reference ``main``: config checks, then ``build_run`` (data,
model, optimiser, resume) once, then per epoch ``train_one_epoch`` and ``validate`` (``captioner.train.epoch``)
on that ``TrainingRun``, checkpoints, and the test splits at the end.

Plain PyTorch: CUDA AMP with GradScaler (fp16) or bf16 autocast, exact resume from ``last.pt``,
torchrun DDP, MLflow on rank 0 only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from captioner.data.annotations import load_annotations
from captioner.data.pipeline import build_data, ensure_prepared
from captioner.data.vocab import Vocab
from captioner.model.build import build_model
from captioner.progress import log_line
from captioner.runtime import checkpoint as ckpt
from captioner.runtime.device import autocast_context, resolve_device, resolve_precision
from captioner.runtime.distributed import DistInfo, cleanup, init_distributed, rank_device
from captioner.runtime.files import write_json_atomic
from captioner.runtime.threads import configure_threads
from captioner.train.divergence import TrainingError, raise_if_weights_diverged
from captioner.train.epoch import RunPruned, train_one_epoch, validate
from captioner.train.resume import command_line_keys, resume_run
from captioner.train.run import TrainingRun, ValidationCallback
from captioner.train.saved_config import check_checkpoint_fits
from captioner.train.state import Progress, checkpoint_state, rank_seed, seed_everything
from captioner.train.teacher_forcing import build_schedule
from captioner.train.validate import validate_config

# Progress, TrainingError and seed_everything are imported from here (tests, the feature cache).
__all__ = [
    "Progress",
    "RunPruned",
    "TrainingError",
    "ValidationCallback",
    "build_run",
    "seed_everything",
    "train",
]


def train(
    cfg: DictConfig, run_dir: str | Path, on_validation: ValidationCallback | None = None
) -> dict[str, Any]:
    """Train with the composed config; returns the final metrics (also written to ``metrics.json``)."""
    from captioner.train.ddp import check_distributed
    from captioner.train.final import final_evaluation
    from captioner.train.objective import check_objective

    # Resume: the checkpoint's config wins over the composed one (captioner.train.resume), before any work,
    # and the run goes on in the checkpoint's folder.
    resumed = resume_run(cfg, command_line_keys(cfg)) if cfg.trainer.resume else None
    if resumed is not None:
        cfg, run_dir = resumed.cfg, resumed.run_dir
    run_dir = Path(run_dir)
    t = cfg.trainer
    validate_config(cfg)
    # Not more threads than idle cores: beside a busy core, a thread that shares it stalls every step.
    threads, why = configure_threads(t.threads)
    t.threads = str(threads)  # the count this run used, in its config and checkpoints (a resume keeps it)
    device = resolve_device(t.device)
    dist_info = init_distributed(device.type)
    device = rank_device(device, dist_info)
    precision = resolve_precision(t.precision, device)
    check_objective(cfg, dist_info.enabled)
    check_distributed(cfg, dist_info.enabled)
    state = None
    if resumed is not None:
        state = resumed.state
        finished = resumed.finished_metrics()
        if dist_info.is_main:
            for line in [*resumed.overrides, resumed.status_line(finished is not None)]:
                log_line(line)
        if finished is not None:  # nothing to train or evaluate: the run's checkpoints stay as they are
            cleanup(dist_info)
            return finished

    run = build_run(cfg, run_dir, device, dist_info, precision, state, on_validation)
    progress, tracker = run.progress, run.tracker
    if dist_info.is_main:
        log_line(f"CPU threads: {threads} ({why})")
    status = "FAILED"
    try:
        # An early-stopped run that is resumed has only its final evaluation left.
        last_epoch = progress.epoch if progress.stopped_early(t.early_stop.patience) else t.epochs
        for epoch in range(progress.epoch, last_epoch):
            stats = train_one_epoch(run, epoch)
            run.scheduler.step_epoch()
            progress.epoch = epoch + 1
            # Scheduled sampling feeds more of the model's own words as epsilon falls, so the loss can
            # rise while the model improves: the epoch line shows epsilon next to the loss.
            summary = (
                f"epoch {progress.epoch}/{t.epochs} loss {stats.loss:.3f} (teacher forcing {stats.epsilon:.2f}) "
                f"{stats.captions_per_s:.0f} captions/s"
            )
            val = None
            if progress.epoch % t.val_every == 0 or progress.epoch == t.epochs:
                val = validate(run)
                summary += val.line
            raise_if_weights_diverged(run.model, epoch, run_dir)
            if dist_info.is_main:
                saved = checkpoint_state(
                    run.model, run.optimizer, run.scheduler, run.scaler, progress, run.vocab, run.config
                )
                if val is not None and val.improved:
                    ckpt.save_checkpoint(run_dir / "best.pt", saved)
                ckpt.save_checkpoint(run_dir / "last.pt", saved)
                log_line(summary)
            if val is not None and val.stop:
                log_line(
                    f"early stop: no {t.early_stop.metric} improvement in {t.early_stop.patience} validations"
                )
                break

        final = {
            "objective": progress.best,
            "objective_metric": t.early_stop.metric,
            "best_epoch": progress.best_epoch,
            **final_evaluation(run),
        }
        if dist_info.is_main:
            write_json_atomic(run_dir / "metrics.json", final, indent=2)
            tracker.log_artifact(run_dir / "metrics.json")
        status = "FINISHED"
        return final
    except RunPruned as err:  # a sweep's pruner stopped it: not a failure, and MLflow says why
        status = "KILLED"
        tracker.set_tags({"pruned": "true", "pruned.epoch": str(err.epoch)})
        if dist_info.is_main:
            log_line(str(err))
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)
        cleanup(dist_info)


def build_run(
    cfg: DictConfig,
    run_dir: Path,
    device: torch.device,
    dist_info: DistInfo,
    precision: str,
    state: dict[str, Any] | None,
    on_validation: ValidationCallback | None = None,
) -> TrainingRun:
    """Everything the epochs share, built once: data, model, objective, optimiser, schedules, tracker.

    ``state`` is the checkpoint a resume continues (weights, optimiser, schedule, scaler, counters, RNG).
    A resumed or ``trainer.init_from`` checkpoint is checked against the vocabulary and the model config
    before the data is built; its weights load after, so a feature cache is encoded as before.
    """
    from captioner.tracking import build_tracker
    from captioner.train.ddp import wrap_model
    from captioner.train.objective import build_objective, init_from, load_init_from
    from captioner.train.optim import build_optimizer
    from captioner.train.schedulers import build_scheduler

    t = cfg.trainer
    seed_everything(t.seed)  # the same seed on every rank: equal initial weights

    data_root = ensure_prepared(cfg.data, dist_info)
    vocab = Vocab.load(data_root / "vocab.json")
    start = None  # trainer.init_from's checkpoint
    if state is not None:
        check_checkpoint_fits(state, vocab, cfg, f"trainer.resume={t.resume}")
    elif t.init_from:  # a second stage (e.g. SCST) starts from another run's weights
        start = load_init_from(t.init_from, vocab, cfg)
    records = load_annotations(data_root)
    model = build_model(cfg.encoder, cfg.decoder, vocab).to(device)
    if t.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    data = build_data(cfg, data_root, vocab, model, device, dist_info)
    if state is not None:
        model.load_state_dict(state["model"])
    elif start is not None:
        init_from(model, start, t.init_from)
    objective = build_objective(cfg, model, vocab, records)

    optimizer = build_optimizer(model, **cfg.optimizer)
    steps_per_epoch = math.ceil(len(data.train) / t.accumulate)
    scheduler = build_scheduler(
        optimizer,
        total_steps=steps_per_epoch * t.epochs,
        steps_per_epoch=steps_per_epoch,
        metric_mode=t.early_stop.mode,
        **cfg.scheduler,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    progress = Progress()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        ckpt.set_rng_state(state["rng"])
    if dist_info.rank > 0:
        # nanoGPT's seed offset: each rank draws its own dropout masks and scheduled-sampling coins.
        # Rank 0 keeps its stream (no re-seed), so a single-process run is unchanged.
        seed_everything(rank_seed(t.seed, dist_info.rank, dist_info.world_size, progress.step))
    train_model = wrap_model(model, device, dist_info, t.compile)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = build_tracker(
        enabled=dist_info.is_main and cfg.logger.enabled,
        tracking_uri=cfg.logger.tracking_uri,
        experiment=cfg.logger.experiment,
        run_name=cfg.logger.run_name,
        params=resolved,
        tags=dict(cfg.logger.tags or {}),
        run_id=progress.run_id,
        run_dir=run_dir,
        resume=state is not None,
    )
    progress.run_id = tracker.run_id
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", resolved, indent=2)
        if state is None:
            tracker.log_artifact(run_dir / "config.json")

    return TrainingRun(
        cfg=cfg,
        config=resolved,
        run_dir=run_dir,
        device=device,
        dist_info=dist_info,
        autocast=autocast_context(device, precision),
        vocab=vocab,
        records=records,
        data=data,
        model=model,
        train_model=train_model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        tf_schedule=build_schedule(**cfg.tf),
        scaler=scaler,
        progress=progress,
        tracker=tracker,
        on_validation=on_validation,
    )
