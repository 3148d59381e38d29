"""Build what the loop needs from the config: device, precision, prepared data, model, loaders."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from captioner.data.records import MANIFEST
from captioner.data.vocab import Vocab
from captioner.errors import ConfigError, DataError
from captioner.progress import log_line
from captioner.train.distributed import SINGLE, DistInfo

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
NO_AUGMENT = {
    "hflip": 0.0,
    "color_jitter": 0.0,
    "noise_std": 0.0,
    "optical_strength": 0.0,
    "crop_scale_min": 1.0,
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto"
        )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp16 mixed precision on CUDA, fp32 on CPU (this CPU has no native bf16: autocast is ~3x slower)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (GradScaler); on CPU use fp32 or bf16")
    return precision


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    """``torch.autocast`` for fp16/bf16 as the AMP docs prescribe; a no-op for fp32."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def ensure_prepared(data_cfg: DictConfig, dist_info: DistInfo = SINGLE) -> Path:
    """The prepared data folder; the generated shapes set is made on first use, real data must be prepared."""
    root = Path(data_cfg.root)
    prepare = OmegaConf.to_container(data_cfg.prepare, resolve=True)
    if (root / MANIFEST).exists():
        if prepare.get("format") == "shapes":
            from captioner.data.records import read_manifest

            made_with = read_manifest(root)["source"].get("generator", {})
            wanted = {k: v for k, v in prepare.items() if k != "format"}
            changed = sorted(k for k in wanted if made_with.get(k) != wanted[k])
            if changed:
                raise DataError(
                    f"{root} was generated with other settings ({', '.join(f'{k}={made_with.get(k)}' for k in changed)}); "
                    f"set data.root to a new folder or delete {root} to regenerate"
                )
        return root
    if data_cfg.prepare.format != "shapes":
        raise DataError(
            f"prepared data not found at {root}; run `python -m captioner.prepare data={data_cfg.name}` first"
        )
    if dist_info.is_main:
        from captioner.data.prepare import prepare_dataset

        log_line(f"generating the shapes benchmark into {root} (once)")
        prepare_dataset(out=root, **prepare)
    if dist_info.enabled:
        torch.distributed.barrier()
    return root


def build_model(
    encoder_cfg: Mapping[str, Any], decoder_cfg: Mapping[str, Any], vocab: Vocab
) -> torch.nn.Module:
    """Encoder from the ``encoder`` group, decoder from the ``decoder`` group sized to the vocabulary."""
    from captioner.model.captioner import Captioner
    from captioner.model.decoder import Decoder
    from captioner.model.encoder import build_encoder

    encoder = build_encoder(**_plain(encoder_cfg))
    decoder = Decoder(
        vocab_size=len(vocab), encoder_dim=encoder.out_dim, **_plain(decoder_cfg), vocab_itos=vocab.itos
    )
    return Captioner(encoder, decoder)


def update_finetune(model: torch.nn.Module, step: int) -> None:
    """Start fine-tuning the encoder once ``finetune_start_step`` is reached."""
    enc = getattr(model, "encoder", None)
    if enc is not None and enc.finetune:
        enc.set_finetune(step >= enc.finetune_start_step)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


@dataclass
class Data:
    """Loaders and helpers the loop uses; ``features`` is set when training on cached encoder features."""

    train: torch.utils.data.DataLoader
    eval: dict[str, torch.utils.data.DataLoader]
    root: Path
    cached: bool = False
    store: Any = None
    seed: int = 0
    rank: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically for ``epoch`` (bucket sampler, DDP shards)."""
        sampler = self.train.batch_sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if (
            self.train.generator is not None
        ):  # worker augmentation seeds: a function of the epoch, so resume is exact
            self.train.generator.manual_seed(self.seed * 1_000_003 + self.rank * 1009 + epoch)

    def inputs(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        """Images or cached features of a batch, on ``device``."""
        x = batch["features"] if self.cached else batch["images"]
        return x.to(device, non_blocking=True).float()

    def image(self, image_id: str) -> np.ndarray:
        """The stored image (H, W, 3) uint8, for figures."""
        return np.asarray(self.store.pil(image_id))


def build_data(
    cfg: DictConfig,
    root: Path,
    vocab: Vocab,
    model: torch.nn.Module,
    device: torch.device,
    dist_info: DistInfo,
) -> Data:
    """Loaders for train and every eval split; frozen encoders train on an fp16 feature cache."""
    from captioner.data.features import FeatureCache
    from captioner.data.loaders import build_loaders
    from captioner.data.store import ImageStore

    loader_cfg = _plain(cfg.data.loader)
    encoder = model.encoder
    cached = bool(cfg.trainer.cache_features) and not encoder.finetune
    features = None
    if cached:
        from captioner.data.records import read_annotations

        splits = sorted({r.split for r in read_annotations(root)})
        key = _plain(cfg.encoder)
        if not key["pretrained"]:  # a randomly initialised encoder's features depend on the seed
            key["init_seed"] = cfg.trainer.seed
        cache = FeatureCache(root, key, loader_cfg["image_size"], loader_cfg["num_workers"])
        # Encoding (first use only) draws DataLoader seeds from the global RNG: fork it, so a run that
        # builds the cache trains exactly like one that reads it (exact resume depends on this).
        with torch.random.fork_rng(devices=[]):
            if dist_info.is_main:  # one rank encodes, the others wait and read
                cache.ensure(encoder, splits, cfg.trainer.encode_batch_size, device)
            if dist_info.enabled:
                torch.distributed.barrier()
            features = cache.ensure(encoder, splits, cfg.trainer.encode_batch_size, device)
    augment = _plain(cfg.data.augment)
    if cached:  # cached features are of un-augmented images
        augment = NO_AUGMENT
        if dist_info.is_main:
            log_line(
                "training on cached frozen-encoder features: image augmentation is off (trainer.cache_features=false to augment)"
            )
    train, evals = build_loaders(
        root,
        vocab,
        augment=augment,
        features=features,
        distributed=(dist_info.world_size, dist_info.rank),
        seed=cfg.trainer.seed,
        **loader_cfg,
    )
    return Data(
        train=train,
        eval=evals,
        root=root,
        cached=cached,
        store=ImageStore(root),
        seed=cfg.trainer.seed,
        rank=dist_info.rank,
    )


def validate_config(cfg: DictConfig) -> None:
    """Build every cheap object the config describes, so a bad value fails before data or weights load."""
    from captioner.decode import DecodeConfig
    from captioner.model.captioner import Captioner
    from captioner.model.decoder import Decoder
    from captioner.model.encoder import ARCHS, ensure_weights
    from captioner.train.optim import build_optimizer, build_scheduler
    from captioner.train.teacher_forcing import build_schedule

    t = cfg.trainer
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
    if not 0.0 <= cfg.smoothing.value < 1.0:
        raise ConfigError(f"smoothing.value={cfg.smoothing.value} must be in [0, 1)")
    DecodeConfig(**_plain(cfg.decode))
    build_schedule(**_plain(cfg.tf))
    decoder_kwargs = {**_plain(cfg.decoder), "pretrained_embeddings": None}
    probe = Captioner(None, Decoder(vocab_size=8, encoder_dim=8, **decoder_kwargs))
    optimizer = build_optimizer(probe, **_plain(cfg.optimizer))
    build_scheduler(optimizer, total_steps=10, steps_per_epoch=5, **_plain(cfg.scheduler))
    if cfg.encoder.pretrained:
        ensure_weights(cfg.encoder.arch)  # before data generation: an offline machine learns in seconds
    elif not cfg.encoder.finetune:
        log_line(
            f"warning: encoder.pretrained=false with a frozen encoder: the decoder trains on features of a "
            f"random {cfg.encoder.arch}, so captions will barely depend on the image; set "
            "encoder.finetune=true to train the encoder too, or use ImageNet weights (encoder=mobilenet_v2)"
        )
