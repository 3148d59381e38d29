"""Structured config schemas: every YAML in ``conf/`` is checked against these at start.

A typo (``trainer.epoch=3``) or a wrong type (``trainer.epochs=ten``) fails before any work, naming
the key. Each group's fields are the keyword arguments of the constructor the group feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class EarlyStopConfig:
    metric: str = "bleu4"
    mode: str = "max"
    patience: int = 0


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: str = "norm"
    clip_value: float = 5.0
    accumulate: int = 1
    val_every: int = 1
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    cache_features: bool = True
    encode_batch_size: int = 64
    att_gamma: float = 1.0
    att_reduction: str = "mean"
    seed: int = 0
    threads: int = 0
    resume: str | None = None
    log_every: int = 20
    figures: int = 4


@dataclass
class LoggerConfig:
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = MISSING
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TeacherForcingConfig:
    """kwargs of ``captioner.train.teacher_forcing.build_schedule``."""

    name: str = "inv_sigmoid"
    epochs: int = MISSING
    k: float = 1.0
    floor: float = 0.0
    gamma: float = 0.9


@dataclass
class OptimizerConfig:
    """kwargs of ``captioner.train.optim.build_optimizer``."""

    name: str = "adamw"
    encoder_lr: float = 1e-5
    decoder_lr: float = 2e-3
    embedding_lr: float | None = None
    weight_decay: float = 1e-2
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class SchedulerConfig:
    """kwargs of ``captioner.train.optim.build_scheduler`` (the loop adds the step counts)."""

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 1e-3
    factor: float = 0.5
    patience: int = 2
    gamma: float = 0.9
    step_size: int = 1
    n_cycles: int = 3
    cycle_mult: float = 2.0
    pct_start: float = 0.3


@dataclass
class SmoothingConfig:
    """Label smoothing of the word cross-entropy (``caption_loss(smoothing=...)``)."""

    value: float = 0.0


@dataclass
class EncoderConfig:
    """kwargs of ``captioner.model.encoder.build_encoder``."""

    arch: str = MISSING
    pretrained: bool = True
    encoder_dim: int | None = None
    encoder_size: int | None = None
    finetune: bool = False
    finetune_start_step: int = 0
    layer: str | None = None


@dataclass
class DecoderConfig:
    """kwargs of ``captioner.model.decoder.Decoder`` (vocab_size and encoder_dim come from data/encoder)."""

    embed_dim: int = 256
    hidden_dim: int = 256
    attention_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.5
    deep_output: bool = True
    beta_gate: str = "scalar"
    tie_weights: bool = False
    embed_max_norm: float | None = None
    pretrained_embeddings: str | None = None
    freeze_embeddings: bool = False
    context: str = "soft"
    attend_word: bool = False
    coverage: bool = False


@dataclass
class LoaderConfig:
    """kwargs of ``captioner.data.loaders.build_loaders`` that a data config sets."""

    batch_size: int = 64
    image_size: int = 224
    max_len: int = 30
    num_workers: int = 0
    bucket: bool = True


@dataclass
class AugmentConfig:
    """kwargs of ``captioner.data.transforms.build_train_transform``."""

    hflip: float = 0.5
    color_jitter: float = 0.1
    noise_std: float = 0.0
    optical_strength: float = 0.0
    crop_scale_min: float = 0.9


@dataclass
class DataConfig:
    """A dataset: where its prepared folder lives, how to prepare it, how to load it."""

    name: str = MISSING
    root: str = MISSING
    prepare: dict[str, Any] = field(default_factory=dict)  # kwargs of prepare_dataset, per format
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class PathsConfig:
    root: str = "."
    data_dir: str = "data"
    shared: str = "../shared"
    output_dir: str = "runs"


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: Any = MISSING
    encoder: Any = MISSING
    decoder: Any = MISSING
    tf: Any = MISSING
    scheduler: Any = MISSING
    smoothing: Any = MISSING
    optimizer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register() -> None:
    """Register the schemas under the names the YAML files' defaults lists use (``base_<group>``)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="logger", name="base_logger", node=LoggerConfig)
    from captioner.decode import DecodeConfig

    cs.store(group="tf", name="base_tf", node=TeacherForcingConfig)
    cs.store(group="encoder", name="base_encoder", node=EncoderConfig)
    cs.store(group="decoder", name="base_decoder", node=DecoderConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="decode", name="base_decode", node=DecodeConfig)
    cs.store(group="optimizer", name="base_optimizer", node=OptimizerConfig)
    cs.store(group="scheduler", name="base_scheduler", node=SchedulerConfig)
    cs.store(group="smoothing", name="base_smoothing", node=SmoothingConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)
