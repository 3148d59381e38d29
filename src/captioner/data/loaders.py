"""Wire datasets, the bucket sampler and transforms into the train loader and one loader per eval split."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from captioner.data.annotations import load_annotations
from captioner.data.dataset import (
    CaptionDataset,
    ImageDataset,
    collate_captions,
    collate_grouped,
    collate_images,
)
from captioner.data.features import FeatureReader
from captioner.data.sampler import BucketBatchSampler, ImageBatchSampler, OncePerImageSampler
from captioner.data.transforms import build_eval_transform, build_train_transform
from captioner.data.vocab import Vocab
from captioner.errors import ConfigError, require

AUGMENT_DEFAULTS = {
    k: p.default for k, p in inspect.signature(build_train_transform).parameters.items() if k != "image_size"
}
AUGMENT_KEYS = tuple(AUGMENT_DEFAULTS)


def _augments_anything(augment: dict) -> bool:
    a = AUGMENT_DEFAULTS | augment
    return a["crop_scale_min"] < 1.0 or any(a[k] > 0 for k in AUGMENT_KEYS if k != "crop_scale_min")


def build_loaders(
    root: str | Path,
    vocab: Vocab,
    batch_size: int,
    image_size: int = 224,
    max_len: int = 30,
    num_workers: int = 0,
    bucket: bool = True,
    group_by_image: bool = False,
    once_per_image: bool = False,
    augment: dict | None = None,
    features: FeatureReader | None = None,
    distributed: tuple[int, int] = (1, 0),
    seed: int = 0,
    eval_splits: Sequence[str] | None = None,
    eval_batch_size: int | None = None,
    drop_last: bool = False,
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """Train loader (bucketed, sharded over ``distributed=(num_replicas, rank)``) and eval loaders.

    ``augment`` holds :func:`build_train_transform`'s keyword arguments. With ``features`` (cached
    frozen-encoder annotations) no image is read and augmentation must be off. Eval loaders cover
    ``eval_splits`` (default: every split but train) in dataset order, sharded under DDP; the
    train sampler is ``train_loader.batch_sampler`` (call ``set_epoch``; save its state to resume).
    ``group_by_image`` batches whole images (every caption of each image, one view shared by them,
    each image's input once with ``image_index``; see :class:`ImageBatchSampler`) instead of buckets;
    ``once_per_image`` trains on each image once an epoch, one caption item each (SCST, which samples
    its own captions; see :class:`OncePerImageSampler`).
    """
    require(
        not (group_by_image and once_per_image),
        "group_by_image (every caption of an image) and once_per_image (one item an image) exclude "
        "each other; set data.loader.group_by_image=false",
    )
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    require(not unknown, f"unknown augment keys {unknown}; valid keys: {list(AUGMENT_KEYS)}")
    if features is not None and _augments_anything(augment):
        raise ConfigError(
            f"cached features are eval-transform features, so augment={augment} would be ignored; "
            "turn augmentation off (hflip=0, color_jitter=0, noise_std=0, optical_strength=0, "
            "crop_scale_min=1) or disable the feature cache"
        )
    num_replicas, rank = distributed
    require(num_workers >= 0, f"num_workers={num_workers} must be >= 0")
    pin = torch.cuda.is_available()
    common = {"num_workers": num_workers, "pin_memory": pin, "persistent_workers": num_workers > 0}

    train = CaptionDataset(
        root,
        "train",
        vocab,
        max_len,
        transform=None if features is not None else build_train_transform(image_size, **augment),
        features=features,
        group_by_image=group_by_image,
    )
    shards = dict(shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
    if group_by_image:
        sampler = ImageBatchSampler(
            train.pairs[:, 0], batch_size, lengths=train.lengths, bucket=bucket, **shards
        )
    elif once_per_image:
        sampler = OncePerImageSampler(train.pairs[:, 0], batch_size, **shards)
    else:
        sampler = BucketBatchSampler(train.lengths, batch_size, bucket=bucket, **shards)
    # Seeds the workers' RNG (flips, crops, jitter): reproducible, and different per rank.
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    collate = collate_grouped if group_by_image else collate_captions
    train_loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate, generator=generator, **common)

    if eval_splits is None:
        eval_splits = [s for s in load_annotations(root).splits if s != "train"]
    eval_loaders = {
        split: build_eval_loader(
            root, split, image_size, eval_batch_size or batch_size, features, num_workers, distributed
        )
        for split in eval_splits
    }
    return train_loader, eval_loaders


def build_eval_loader(
    root: str | Path,
    split: str,
    image_size: int,
    batch_size: int,
    features: FeatureReader | None = None,
    num_workers: int = 0,
    distributed: tuple[int, int] = (1, 0),
) -> DataLoader:
    """Images (or cached features) of one split in dataset order, for decoding and scoring.

    Under DDP (``distributed=(num_replicas, rank)``) rank r takes images r, r + n, r + 2n, ...: every
    image is decoded by exactly one rank. torch's DistributedSampler would pad the last shard with
    repeats, which would decode those images twice.
    """
    num_replicas, rank = distributed
    dataset = ImageDataset(root, split, build_eval_transform(image_size), features)
    if num_replicas > 1:
        dataset = Subset(dataset, range(rank, len(dataset), num_replicas))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_images,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
