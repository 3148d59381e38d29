"""From a config to batches: the prepared folder (shapes generated on first use), the feature cache of
the encoder's frozen prefix, and the train and eval loaders bundled for the loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from captioner.data.annotations import load_annotations
from captioner.data.features import FeatureCache, FeatureReader
from captioner.data.loaders import build_loaders
from captioner.data.records import MANIFEST, read_manifest
from captioner.data.store import ImageStore
from captioner.data.transforms import as_float
from captioner.data.vocab import Vocab
from captioner.errors import DataError
from captioner.progress import log_line
from captioner.runtime.distributed import SINGLE, DistInfo

NO_AUGMENT = {
    "hflip": 0.0,
    "color_jitter": 0.0,
    "noise_std": 0.0,
    "optical_strength": 0.0,
    "crop_scale_min": 1.0,
}


def ensure_prepared(data_cfg: DictConfig, dist_info: DistInfo = SINGLE) -> Path:
    """The prepared data folder; the generated shapes set is made on first use, real data must be prepared."""
    root = Path(data_cfg.root)
    prepare = OmegaConf.to_container(data_cfg.prepare, resolve=True)
    if (root / MANIFEST).exists():
        if prepare.get("format") == "shapes":
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
        where = root if root.is_absolute() else f"{root} under the launch folder {Path.cwd()}"
        raise DataError(
            f"prepared data not found at {where}; run `python -m captioner.prepare data={data_cfg.name}` first"
        )
    if dist_info.is_main:
        from captioner.data.prepare import prepare_dataset

        log_line(f"generating the shapes benchmark into {root} (once)")
        prepare_dataset(out=root, **prepare)
    if dist_info.enabled:
        torch.distributed.barrier()
    return root


def uses_feature_cache(config: Mapping[str, Any]) -> bool:
    """Whether a run with this resolved config trains (and is scored) on cached features of its encoder's
    frozen prefix: every encoder but one fine-tuned whole (``Encoder.cacheable``), unless
    ``trainer.cache_features=false``."""
    encoder = config["encoder"]
    # .get: checkpoints written before encoder.finetune_from existed lack the key
    frozen_prefix = not encoder["finetune"] or encoder.get("finetune_from") is not None
    return bool(config["trainer"]["cache_features"]) and frozen_prefix


def feature_key(config: Mapping[str, Any], encoder: torch.nn.Module) -> dict[str, Any]:
    """What the cached maps of ``encoder``'s frozen prefix depend on (the feature cache's key).

    A frozen encoder without a trainable tail caches its annotations, keyed on the whole ``encoder``
    group as before ``finetune_from`` existed (which it ignores), so those caches stay valid. A prefix
    followed by a trainable tail (fine-tuned blocks or the ``encoder_dim`` projection) caches the trunk's
    map up to where the tail starts, whatever the tail's settings: runs that differ only there share it.
    """
    key = {k: v for k, v in config["encoder"].items() if k != "finetune_from"}
    if encoder.tail_start is not None:
        key = {k: key[k] for k in ("arch", "pretrained", "layer")}
        key["prefix_ends_before"] = encoder.tail_start
    if not key["pretrained"]:  # a randomly initialised encoder's features depend on the seed
        key["init_seed"] = config["trainer"]["seed"]
    return key


def cached_features(
    root: Path,
    config: Mapping[str, Any],
    encoder: torch.nn.Module,
    splits: Sequence[str],
    device: torch.device,
    dist_info: DistInfo = SINGLE,
) -> FeatureReader:
    """The fp16 cache of ``encoder``'s frozen-prefix maps over ``splits`` (encoded on first use).

    Training and evaluate.py both read features through here (and apply the encoder's trainable tail
    to them), so one checkpoint scores the same whichever of them evaluates it.
    """
    loader_cfg = config["data"]["loader"]
    cache = FeatureCache(
        root, feature_key(config, encoder), loader_cfg["image_size"], loader_cfg["num_workers"]
    )
    prefix = encoder.frozen_prefix()
    batch_size = config["trainer"]["encode_batch_size"]
    # Encoding (first use only) draws DataLoader seeds from the global RNG: fork it, so a run that
    # builds the cache trains exactly like one that reads it (exact resume depends on this).
    with torch.random.fork_rng(devices=[]):
        if dist_info.is_main:  # one rank encodes, the others wait and read
            cache.ensure(prefix, splits, batch_size, device)
        if dist_info.enabled:
            torch.distributed.barrier()
        return cache.ensure(prefix, splits, batch_size, device)


@dataclass
class Data:
    """Loaders and helpers the loop uses; ``cached`` is set when training on cached encoder features."""

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
        return as_float(x.to(device, non_blocking=True))  # the train loader's images come as uint8

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
    """Loaders for train and every eval split (sharded under DDP); an encoder with a frozen prefix trains on
    an fp16 cache of it (``uses_feature_cache``)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    loader_cfg = config["data"]["loader"]
    cached = uses_feature_cache(config)
    features = None
    if cached:
        splits = load_annotations(root).splits
        features = cached_features(root, config, model.encoder, splits, device, dist_info)
    augment = config["data"]["augment"]
    if cached:  # cached features are of un-augmented images
        augment = NO_AUGMENT
        if dist_info.is_main:
            tail = model.encoder.tail_start
            log_line(
                "training on cached frozen-encoder features"
                + (f" (the frozen prefix's, before {tail}, which trains)" if tail else "")
                + ": image augmentation is off (trainer.cache_features=false to augment)"
            )
    train, evals = build_loaders(
        root,
        vocab,
        augment=augment,
        features=features,
        distributed=(dist_info.world_size, dist_info.rank),
        seed=cfg.trainer.seed,
        # SCST samples its own captions for an image and rewards them against all its references
        once_per_image=cfg.objective.name == "scst",
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
