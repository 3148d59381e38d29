"""The training loop, top to bottom: data, model, optimiser, epochs, validation, checkpoints, test.

Plain PyTorch in the shape of torchvision's reference ``train.py``: CUDA AMP with GradScaler (fp16)
or bf16 autocast, exact resume from ``last.pt``, torchrun DDP, MLflow on rank 0 only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from captioner.data.pipeline import build_data, ensure_prepared
from captioner.data.records import ImageRecord, load_annotations
from captioner.data.vocab import Vocab
from captioner.errors import CaptionerError, CheckpointError, ConfigError
from captioner.evaluation import TEST_METRICS, SplitResult, evaluate_split
from captioner.evaluation.report import sample_lines
from captioner.model.build import build_model, update_finetune
from captioner.progress import log_line
from captioner.progress import progress as progress_bar
from captioner.runtime import checkpoint as ckpt
from captioner.runtime.device import autocast_context, resolve_device, resolve_precision
from captioner.runtime.distributed import (
    all_reduce_mean,
    broadcast_object,
    cleanup,
    init_distributed,
    rank_device,
)
from captioner.runtime.files import write_json_atomic
from captioner.train.validate import validate_config

# Called after each validation with (metric, epoch); the entry point passes the sweep's pruning
# report here, so the loop never imports the sweeper. It may raise to stop the run (optuna.TrialPruned).
ValidationCallback = Callable[[float, int], None]


class TrainingError(CaptionerError):
    """Training cannot go on (NaN loss); the last good checkpoint is named in the message."""


@dataclass
class Progress:
    """Loop counters saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0
    run_id: str | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: DictConfig, run_dir: str | Path, on_validation: ValidationCallback | None = None
) -> dict[str, Any]:
    """Train with the composed config; returns the final metrics (also written to ``metrics.json``)."""
    from captioner.tracking import build_tracker
    from captioner.train.objective import build_objective, check_objective, init_from
    from captioner.train.optim import build_optimizer, build_scheduler, clip_gradients
    from captioner.train.teacher_forcing import build_schedule

    t = cfg.trainer
    validate_config(cfg)
    if t.threads > 0:  # several runs on one machine: oversubscribed OpenMP threads spin and crawl
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    dist_info = init_distributed(device.type)
    device = rank_device(device, dist_info)
    precision = resolve_precision(t.precision, device)
    check_objective(cfg, dist_info.enabled)
    run_dir = Path(run_dir)

    # Resume: the checkpoint decides the run folder, and its config must match this one.
    state = _load_resume(t.resume) if t.resume else None
    if state is not None:
        run_dir = Path(t.resume) if Path(t.resume).is_dir() else Path(t.resume).parent
    seed_everything(t.seed)

    data_root = ensure_prepared(cfg.data, dist_info)
    vocab = Vocab.load(data_root / "vocab.json")
    records = load_annotations(data_root)
    model = build_model(cfg.encoder, cfg.decoder, vocab).to(device)
    if t.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    data = build_data(cfg, data_root, vocab, model, device, dist_info)
    if state is not None:
        _check_resume_compatible(state, vocab, cfg)
        model.load_state_dict(state["model"])
    elif t.init_from:  # a second stage (e.g. SCST) starts from another run's weights
        init_from(model, t.init_from, vocab, cfg)
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
    tf_schedule = build_schedule(**cfg.tf)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    progress = Progress()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        ckpt.set_rng_state(state["rng"])

    train_model = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    if t.compile:
        train_model = torch.compile(train_model)

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

    autocast = autocast_context(device, precision)
    status = "FAILED"
    try:
        for epoch in range(progress.epoch, t.epochs):
            data.set_epoch(epoch)
            train_model.train()
            bar = progress_bar(
                data.train, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not dist_info.is_main, leave=False
            )
            seen, started, running = 0, time.perf_counter(), 0.0
            for i, batch in enumerate(bar):
                eps = tf_schedule.epsilon(epoch + i / len(data.train))
                update_finetune(model, progress.step)
                inputs = data.inputs(batch, device)
                captions = batch["captions"].to(device, non_blocking=True)
                last_micro = (i + 1) % t.accumulate == 0 or i + 1 == len(data.train)
                sync = nullcontext() if last_micro or not dist_info.enabled else train_model.no_sync()
                with sync:
                    with autocast:
                        loss, parts = objective(train_model, inputs, batch, eps, data.cached)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss.item()} at epoch {epoch + 1}, step {progress.step}; "
                            f"the last good checkpoint is {run_dir / 'last.pt'}; lower the learning rates "
                            "(optimizer.decoder_lr) or clip gradients (trainer.grad_clip=norm)"
                        )
                    scaler.scale(loss / t.accumulate).backward()
                if not last_micro:
                    continue
                scaler.unscale_(optimizer)
                grad_norm = clip_gradients(model.parameters(), t.grad_clip, t.clip_value)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step_batch()
                progress.step += 1
                seen += captions.shape[0]
                running = 0.9 * running + 0.1 * loss.item() if running else loss.item()
                bar.set_postfix(
                    **({"reward": f"{float(parts['reward']):.3f}"} if "reward" in parts else {}),
                    loss=f"{running:.3f}",
                    eps=f"{eps:.2f}",
                    cap_s=f"{seen / (time.perf_counter() - started):.0f}",
                )
                if progress.step % t.log_every == 0:
                    lrs = {f"lr.{g.get('name', j)}": g["lr"] for j, g in enumerate(optimizer.param_groups)}
                    tracker.log_metrics(
                        {
                            "train.loss": loss.item(),
                            **{f"train.{k}": float(v) for k, v in parts.items()},
                            "train.epsilon": eps,
                            "train.grad_norm": grad_norm,
                            **lrs,
                        },
                        step=progress.step,
                    )
            # Wall time of the epoch's training steps (not validation, not the feature cache):
            # what the seed's speed claims compare (bucket sampler, encoder_dim). MLflow only:
            # metrics.json stays deterministic.
            tracker.log_metrics({"time.epoch_train_s": time.perf_counter() - started}, step=progress.step)
            scheduler.step_epoch()
            progress.epoch = epoch + 1
            train_loss = all_reduce_mean(running, dist_info)
            # Scheduled sampling feeds more of the model's own words as epsilon falls, so the loss can
            # rise while the model improves: the epoch line shows epsilon next to the loss.
            summary = (
                f"epoch {progress.epoch}/{t.epochs} loss {train_loss:.3f} (teacher forcing {eps:.2f}) "
                f"{seen / (time.perf_counter() - started):.0f} captions/s"
            )

            stop = False
            if progress.epoch % t.val_every == 0 or progress.epoch == t.epochs:
                result = evaluate_split(
                    model,
                    data.eval["val"],
                    vocab,
                    records,
                    cfg.decode,
                    device,
                    dist_info,
                    autocast,
                    keep_alphas=None if _has_ground_truth(records) else 0,
                )
                metric = broadcast_object(result.metrics.get(t.early_stop.metric), dist_info)
                if metric is None:
                    raise ConfigError(
                        f"trainer.early_stop.metric={t.early_stop.metric!r} is not computed; "
                        f"choose one of {sorted(result.metrics)}"
                    )
                scheduler.step_validation(metric)
                improved = progress.best is None or (
                    metric > progress.best if t.early_stop.mode == "max" else metric < progress.best
                )
                if improved:
                    progress.best, progress.best_epoch, progress.bad_validations = metric, progress.epoch, 0
                else:
                    progress.bad_validations += 1
                stop = t.early_stop.patience > 0 and progress.bad_validations >= t.early_stop.patience
                tracker.log_metrics({f"val.{k}": v for k, v in result.metrics.items()}, step=progress.step)
                if improved:  # the best validation as numbers the MLflow UI can sort and compare
                    best = {f"best.{k}": v for k, v in result.metrics.items()}
                    tracker.log_metrics({**best, "best.epoch": progress.epoch}, step=progress.step)
                if on_validation is not None:
                    on_validation(metric, progress.epoch)
                shown = {
                    k: result.metrics[k] for k in ("bleu4", "cider_d", "object_f1") if k in result.metrics
                }
                summary += " | val " + " ".join(f"{k} {v:.3g}" for k, v in shown.items())
                summary += " (best)" if improved else f" (best {progress.best:.3g} @ {progress.best_epoch})"
                if improved and dist_info.is_main:
                    ckpt.save_checkpoint(
                        run_dir / "best.pt",
                        _state(model, optimizer, scheduler, scaler, progress, vocab, resolved),
                    )
            if dist_info.is_main:
                ckpt.save_checkpoint(
                    run_dir / "last.pt",
                    _state(model, optimizer, scheduler, scaler, progress, vocab, resolved),
                )
                log_line(summary)
            if stop:
                log_line(
                    f"early stop: no {t.early_stop.metric} improvement in {t.early_stop.patience} validations"
                )
                break

        final = {
            "objective": progress.best,
            "objective_metric": t.early_stop.metric,
            "best_epoch": progress.best_epoch,
            **_final_evaluation(
                cfg, model, data, vocab, records, device, dist_info, autocast, run_dir, tracker
            ),
        }
        if dist_info.is_main:
            write_json_atomic(run_dir / "metrics.json", final, indent=2)
            tracker.log_artifact(run_dir / "metrics.json")
        status = "FINISHED"
        return final
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)
        cleanup(dist_info)


def _has_ground_truth(records: dict[str, ImageRecord]) -> bool:
    return any("objects" in r.meta for r in records.values())


def _state(
    model, optimizer, scheduler, scaler, progress: Progress, vocab: Vocab, resolved: dict
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


def _load_resume(resume: str) -> dict[str, Any]:
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    return ckpt.load_checkpoint(path)


def _check_resume_compatible(state: dict[str, Any], vocab: Vocab, cfg: DictConfig) -> None:
    if state["vocab"] != vocab.itos:
        raise CheckpointError(
            "the checkpoint's vocabulary does not match the data's vocab.json; resume with the same data config"
        )
    saved = state["config"]
    for key in ("encoder", "decoder"):
        now = OmegaConf.to_container(cfg[key], resolve=True)
        before = saved.get(key, {})
        # keys added to the schema after the checkpoint was written are not a difference
        changed = sorted(k for k in now if k in before and before[k] != now[k])
        if changed:
            diff = ", ".join(f"{key}.{k}: {before[k]} -> {now[k]}" for k in changed)
            raise CheckpointError(
                f"the checkpoint was trained with another {key} config ({diff}); resume with the same {key} settings"
            )


def _final_evaluation(
    cfg, model, data, vocab, records, device, dist_info, autocast, run_dir, tracker
) -> dict:
    """Reload the best weights, score the test splits, write metrics.json and attention figures."""
    from captioner.viz import attention_figure

    best = run_dir / "best.pt"
    if dist_info.enabled:  # rank 0 may still be writing best.pt: every rank must load the same weights
        torch.distributed.barrier()
    if best.exists():
        model.load_state_dict(ckpt.load_checkpoint(best, map_location=device)["model"])
    results: dict[str, SplitResult] = {}
    for split in ("test", "test_novel"):
        if split in data.eval:
            results[split] = evaluate_split(
                model,
                data.eval[split],
                vocab,
                records,
                cfg.decode,
                device,
                dist_info,
                autocast,
                metrics=TEST_METRICS,
            )
    if not dist_info.is_main:
        return {}
    final = {split: r.metrics for split, r in results.items()}
    tracker.log_metrics({f"{s}.{k}": v for s, m in final.items() for k, v in m.items()}, step=0)
    shown = next(iter(results.values()), None)
    if shown is not None and shown.alphas:
        figures = run_dir / "figures"
        for image_id in sorted(shown.alphas)[: cfg.trainer.figures]:
            words = shown.captions[image_id]
            image = data.image(image_id)
            path = attention_figure(
                image,
                words,
                shown.alphas[image_id],
                shown.grid,
                figures / f"{image_id}.png",
                title=" ".join(words),
            )
            tracker.log_artifact(path, "figures")
        first = sorted(shown.alphas)[0]
        if (figures / f"{first}.png").exists():
            log_line(f"attention figure: {figures / (first + '.png')}")
    if shown is not None:  # a few captions next to a reference: is the model right, not just scored?
        for line in sample_lines(shown, records):
            log_line(line)
    for split, m in final.items():
        log_line(f"{split}: " + " ".join(f"{k}={v:.4g}" for k, v in m.items()))
    log_line(f"checkpoints and metrics in {run_dir}")
    return final
