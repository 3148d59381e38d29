"""Structured config schemas: every YAML in ``conf/`` is checked against these at start.

A typo (``trainer.epoch=3``) or a wrong type (``trainer.epochs=ten``) fails before any work, naming
the key. Each group's fields are the keyword arguments of the constructor the group feeds.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Text metrics of a final test evaluation (train.py) and of evaluate.py unless told otherwise: the scorers'
# default, captioner.metrics.text.DEFAULT_METRICS (spelled out so configs stay import-light; a test checks
# they agree). METEOR runs Java: the seed sweeps at scale=cpu leave it out (sweeps/scale/cpu.yaml).
TEST_METRICS = ("bleu", "meteor", "rouge_l", "cider_d")


@dataclass
class EarlyStopConfig:
    metric: str = "bleu4"  # any validation metric: bleu1..4, cider_d, rouge_l, object_f1, ...
    mode: str = "max"  # max | min: which way is better (early stopping, best.pt, the plateau scheduler)
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early


@dataclass
class TrainerConfig:
    """The training loop's settings (``conf/trainer/*.yaml``); the defaults live here and nowhere else."""

    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto (bf16 on CUDA where supported, else fp16 + GradScaler; fp32 on CPU) | fp32 | fp16 | bf16
    precision: str = "auto"
    channels_last: bool = False  # CUDA only (the fast path turns it on for a fine-tuned encoder)
    # The training fast path (captioner.train.fast_path): auto (on CUDA; eager on CPU) | on | off
    compile: str = "auto"
    grad_clip: str = "norm"  # none | norm | value
    clip_value: float = 5.0
    accumulate: int = 1  # gradient accumulation: optimiser step every N batches
    val_every: int = 1  # validate every N epochs (and after the last)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    cache_features: bool = True  # frozen encoders: encode every image once into an fp16 cache, train on it
    encode_batch_size: int = 64
    att_gamma: float = 1.0  # weight of the doubly stochastic attention loss (paper Eq. 14)
    # mean over locations (seed; keeps the term on the scale of the word loss) | sum (paper Eq. 14)
    att_reduction: str = "mean"
    seed: int = 0
    # CPU threads for torch: auto (the cores no other process is using at start; OMP_NUM_THREADS wins)
    # or a count. Floats depend on the count: the run's config records the one it used.
    threads: str = "auto"
    resume: str | None = None  # a run folder or checkpoint to continue exactly (last.pt)
    # a checkpoint whose model weights start this run (fresh optimiser; objective=scst needs one)
    init_from: str | None = None
    log_every: int = 20  # optimiser steps between MLflow step metrics
    figures: int = 4  # test images with attention figures written at the end
    # text metrics of that final test evaluation: bleu, meteor, rouge_l, cider_d, spice
    test_metrics: list[str] = field(default_factory=lambda: list(TEST_METRICS))


@dataclass
class XEObjectiveConfig:
    """``objective=xe``: word cross-entropy; the location terms apply with ``decoder.attention=hard``."""

    name: str = "xe"
    location_reinforce: float = 1.0  # lambda_r: REINFORCE on the sampled locations (hard attention only)
    location_entropy: float = 0.002  # lambda_e: entropy bonus H[s] (arctic-captions' alpha_entropy_c)
    location_baseline_decay: float = 0.9  # b_k = 0.9 b_{k-1} + 0.1 log p(y|s,a) (the paper's moving average)


@dataclass
class SCSTObjectiveConfig:
    """``objective=scst``: self-critical sequence training (``captioner.train.scst``)."""

    name: str = "scst"
    # greedy: the test-time greedy caption's reward (Rennie et al.) | mean: the other samples' mean ("new SCST")
    baseline: str = "greedy"
    samples: int = 5  # captions sampled per training image (k)
    max_len: int = "${data.loader.max_len}"  # longest sampled caption (tokens incl. <end>): the training cap
    # weights of the reward mix, coco scale (CIDEr-D 5.0 = our 500); object_f1 needs shapes ground truth
    reward: dict[str, float] = field(default_factory=lambda: {"cider_d": 1.0, "bleu4": 0.0, "object_f1": 0.0})


# objective: one schema per choice (their keys differ), chosen by ``objective.name``
OBJECTIVE_SCHEMAS = {"xe": XEObjectiveConfig, "scst": SCSTObjectiveConfig}


@dataclass
class LoggerConfig:
    """MLflow tracking (``conf/logger``): ``logger=none`` only turns it off."""

    enabled: bool = True
    # the embedded local store unless MLFLOW_TRACKING_URI is set (e.g. http://host:5000)
    tracking_uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlflow.db}"
    experiment: str = "${data.name}"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class SmoothingConfig:
    """Label smoothing of the word cross-entropy (``caption_loss(smoothing=...)``)."""

    value: float = 0.0


@dataclass
class LoaderConfig:
    """kwargs of ``captioner.data.loaders.build_loaders`` that a data config sets."""

    batch_size: int = 64
    image_size: int = 224
    max_len: int = 30
    num_workers: int = 0
    bucket: bool = True
    # batches of whole images, each encoded once for all its captions (fine-tuning ~5x fewer encoder passes)
    group_by_image: bool = False


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
    """Where things live; relative paths are relative to the folder you launch from (Hydra does not chdir)."""

    data_dir: str = "data"  # prepared datasets and feature caches (git-ignored)
    # offline extras beside the repo: Flickr8k text + 14 photos, MobileNetV2 weights
    shared: str = "../shared"
    output_dir: str = "runs"  # checkpoints and figures of each training run (git-ignored)


@dataclass
class SweepConfig:
    """Replication of a seed-ablation sweep (``sweeps/sweep/*.yaml`` read it)."""

    # Seeds per version: the group's grid runs trainer.seed = 0 .. seeds-1 for every version, and
    # sweeps/report.py turns them into confidence intervals. 3 is the fewest for a t-interval with
    # a usable width; sweeps/scale/smoke.yaml lowers it.
    seeds: int = 3
    # The grid's first seed: it runs trainer.seed = first_seed .. seeds-1. More seeds for a committed
    # report run only the new ones (sweep.first_seed=3 sweep.seeds=5); `sweeps/report.py --merge` adds
    # them to the committed per-seed runs (a run depends only on its version and seed).
    first_seed: int = 0


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
    objective: Any = MISSING
    decode: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def signature_schema(fn: Callable[..., Any], name: str, exclude: tuple[str, ...] = ()) -> type:
    """A structured-config dataclass whose fields are ``fn``'s keyword arguments, with their defaults.

    The constructor's signature is the one place a default lives: a group's YAML holds only what its
    choice changes, and a typo or a wrong type still fails at start. (hydra-zen's
    ``builds(fn, populate_full_signature=True)`` does the same but adds ``_target_``; our groups are
    passed to their constructor as keyword arguments, one hop, so the target would be a second name.)
    """
    hints = typing.get_type_hints(fn)
    fields = []
    for param in inspect.signature(fn).parameters.values():
        if param.name in exclude or param.name == "self" or param.kind is param.VAR_KEYWORD:
            continue
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        if isinstance(default, list | dict):  # mutable defaults need a factory
            fields.append(
                (param.name, hints.get(param.name, Any), field(default_factory=lambda d=default: d))
            )
        else:
            fields.append((param.name, hints.get(param.name, Any), field(default=default)))
    return make_dataclass(name, fields)


def group_schemas() -> dict[str, type]:
    """``{group: schema}`` for the groups whose keys are one constructor's keyword arguments."""
    from captioner.decode import DecodeConfig
    from captioner.model.decoder import Decoder
    from captioner.model.encoder import build_encoder
    from captioner.train.optim import build_optimizer
    from captioner.train.schedulers import build_scheduler
    from captioner.train.teacher_forcing import build_schedule

    return {
        "encoder": signature_schema(build_encoder, "EncoderConfig"),
        # vocab_size, encoder_dim and the vocabulary's words come from the data and the encoder
        "decoder": signature_schema(
            Decoder.__init__, "DecoderConfig", ("vocab_size", "encoder_dim", "vocab_itos")
        ),
        "tf": signature_schema(build_schedule, "TeacherForcingConfig"),
        "optimizer": signature_schema(build_optimizer, "OptimizerConfig", ("model",)),
        # the loop adds the optimizer, the step counts and trainer.early_stop.mode
        "scheduler": signature_schema(
            build_scheduler, "SchedulerConfig", ("optimizer", "total_steps", "steps_per_epoch", "metric_mode")
        ),
        "decode": DecodeConfig,
        "smoothing": SmoothingConfig,
        "trainer": TrainerConfig,
        "logger": LoggerConfig,
        "data": DataConfig,
        "paths": PathsConfig,
    }


def register() -> None:
    """Register the schemas under the names the YAML files' defaults lists use (``base_<group>``), and
    the ``run_dir`` resolver of ``hydra.run.dir``."""
    from captioner.train.run_folder import register_resolver

    register_resolver()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schema in group_schemas().items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for name, schema in OBJECTIVE_SCHEMAS.items():
        cs.store(group="objective", name=f"base_objective_{name}", node=schema)
