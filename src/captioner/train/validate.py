"""Fail at start, in one line, on a config value that would otherwise fail after data or weights load."""

from __future__ import annotations

from omegaconf import DictConfig

from captioner.decode import DecodeConfig
from captioner.errors import ConfigError
from captioner.metrics.text import METRICS
from captioner.model.build import plain
from captioner.model.captioner import Captioner
from captioner.model.decoder import Decoder
from captioner.progress import log_line
from captioner.runtime.hub_weights import ARCHS, ensure_weights
from captioner.train.fast_path import compile_setting
from captioner.train.optim import build_optimizer
from captioner.train.schedulers import build_scheduler
from captioner.train.teacher_forcing import build_schedule


def validate_config(cfg: DictConfig) -> None:
    """Build every cheap object the config describes, so a bad value fails before data or weights load."""
    t = cfg.trainer
    compile_setting(t.compile)
    for key, value, valid in [
        ("trainer.grad_clip", t.grad_clip, ("none", "norm", "value")),
        ("trainer.att_reduction", t.att_reduction, ("sum", "mean")),
        ("trainer.early_stop.mode", t.early_stop.mode, ("max", "min")),
        ("encoder.arch", cfg.encoder.arch, ARCHS),
    ]:
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    for key in ("epochs", "accumulate", "val_every", "log_every", "encode_batch_size"):
        if t[key] < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be >= 1")
    _check_early_stop_metric(cfg)
    unknown = [m for m in t.test_metrics if m not in METRICS]
    if unknown:
        raise ConfigError(
            f"trainer.test_metrics has unknown {unknown}; choose from {', '.join(METRICS)}, e.g. "
            "trainer.test_metrics=[bleu,rouge_l,cider_d]"
        )
    if not 0.0 <= cfg.smoothing.value < 1.0:
        raise ConfigError(f"smoothing.value={cfg.smoothing.value} must be in [0, 1)")
    DecodeConfig(**plain(cfg.decode))
    build_schedule(**plain(cfg.tf))
    decoder_kwargs = {**plain(cfg.decoder), "pretrained_embeddings": None}
    probe = Captioner(None, Decoder(vocab_size=8, encoder_dim=8, **decoder_kwargs))
    optimizer = build_optimizer(probe, **plain(cfg.optimizer))
    build_scheduler(optimizer, total_steps=10, steps_per_epoch=5, **plain(cfg.scheduler))
    if cfg.encoder.pretrained:
        ensure_weights(cfg.encoder.arch)  # before data generation: an offline machine learns in seconds
    elif not cfg.encoder.finetune:
        log_line(
            f"warning: encoder.pretrained=false with a frozen encoder: the decoder trains on features of a "
            f"random {cfg.encoder.arch}, so captions will barely depend on the image; set "
            "encoder.finetune=true to train the encoder too, or use ImageNet weights (encoder=mobilenet_v2)"
        )


# What validation computes (captioner.evaluation.core.VALIDATION_METRICS: BLEU, ROUGE-L, CIDEr-D) and, on
# the generated shapes set, the grounding scores (captioner.metrics.grounding).
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")
GROUNDING_METRICS = (
    "object_precision", "object_recall", "object_f1", "size_accuracy", "exact_scene",
    "pointing_accuracy", "attention_mass",
)  # fmt: skip


def _check_early_stop_metric(cfg: DictConfig) -> None:
    """``trainer.early_stop.metric`` must be a validation metric of this data, known before training starts."""
    metric = cfg.trainer.early_stop.metric
    shapes = cfg.data.prepare.get("format") == "shapes"
    valid = TEXT_METRICS + (GROUNDING_METRICS if shapes else ())
    if metric in valid:
        return
    hint = (
        " (grounding metrics need the shapes benchmark's ground truth)" if metric in GROUNDING_METRICS else ""
    )
    raise ConfigError(
        f"trainer.early_stop.metric={metric!r} is not a validation metric{hint}; choose one of: {', '.join(valid)}"
    )
