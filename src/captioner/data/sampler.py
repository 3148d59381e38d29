"""Length-bucketed, shard-aware, resumable batch sampler (the seed's ``--bucket_sampler``).

Each epoch: permute all indices (seeded by ``seed + epoch``), cut the permutation into chunks of
``chunk_batches * batch_size``, sort each chunk by caption length and cut it into batches, then
shuffle the batch order. Batches therefore hold captions of similar length (little padding) while
the epoch stays random. Only the final batch of an epoch can be short (dropped with ``drop_last``).

Sharding (DDP): the epoch's batch list is dealt round-robin to ``num_replicas`` ranks, so shards are
disjoint and every rank yields the SAME number of batches (a rank that ran out would hang DDP's
collectives). When the batch count is not a multiple of ``num_replicas``: with ``drop_last`` the
extra batches are dropped; otherwise the first batches are repeated to fill (like
``DistributedSampler``), so a few captions are seen twice that epoch.

Resume: ``state_dict(batches_done)`` after a step and ``load_state_dict`` on restart continue the
same epoch at the next unseen batch (the loop passes ``batches_done`` because DataLoader workers
prefetch ahead of what the loop has consumed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from captioner.errors import CheckpointError, require


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices with similar ``lengths``; deterministic per (seed, epoch); shard-aware."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        bucket: bool = True,
        chunk_batches: int = 100,
    ):
        require(len(lengths) > 0, "BucketBatchSampler got no items; the split is empty")
        require(batch_size >= 1, f"batch_size={batch_size} must be >= 1")
        require(num_replicas >= 1, f"num_replicas={num_replicas} must be >= 1")
        require(0 <= rank < num_replicas, f"rank={rank} must be in [0, num_replicas={num_replicas})")
        require(chunk_batches >= 1, f"chunk_batches={chunk_batches} must be >= 1")
        require(
            not drop_last or len(lengths) >= batch_size * num_replicas,
            f"drop_last with {len(lengths)} items leaves no batch for batch_size={batch_size} x "
            f"{num_replicas} ranks; lower the batch size or set drop_last=false",
        )
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.bucket = bucket
        self.chunk_batches = chunk_batches
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (call before each epoch, as with DistributedSampler)."""
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.bucket:
            chunk = self.batch_size * self.chunk_batches
            pieces = []
            for part in order.split(chunk):
                # Stable sort so equal lengths keep the random order drawn above.
                pieces.append(part[torch.sort(self.lengths[part], stable=True).indices])
            order = torch.cat(pieces)
        batches = [b.tolist() for b in order.split(self.batch_size)]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        total = len(batches)
        if self.drop_last:
            batches = batches[: total - total % self.num_replicas]
        else:
            pad = -total % self.num_replicas
            batches += [batches[i % total] for i in range(pad)]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start_batch = self.start_batch, 0  # a resume offset applies to one pass only
        yield from self._rank_batches()[start:]

    def __len__(self) -> int:
        """Batches the next ``__iter__`` yields on this rank (fewer right after a mid-epoch resume)."""
        n = len(self.lengths)
        total = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        per_rank = total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)
        return per_rank - self.start_batch

    def state_dict(self, batches_done: int = 0) -> dict:
        """Position to resume from: ``batches_done`` batches of ``epoch`` already trained on."""
        return {
            "epoch": self.epoch,
            "batches_done": batches_done,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "num_items": len(self.lengths),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state``'s epoch and batch; the data and batching must be unchanged."""
        for key in ("seed", "batch_size", "num_replicas", "num_items"):
            if state[key] != self.state_dict()[key]:
                raise CheckpointError(
                    f"sampler state has {key}={state[key]} but this run has {self.state_dict()[key]}; "
                    "resume with the same data, seed, batch size and world size (or start a new run)"
                )
        self.epoch = state["epoch"]
        self.start_batch = state["batches_done"]


class ImageBatchSampler(BucketBatchSampler):
    """Batches of whole images: every caption of each chosen image, about ``batch_size`` captions a batch.

    For training that runs the encoder (fine-tuning, or augmented images): the encoder then sees each
    image once per batch and its features serve all the image's captions (``collate_grouped`` sends
    ``image_index``), about 5x fewer encoder passes than one image per caption. ``images`` gives the
    image (an integer key) of every item; a batch takes ``round(batch_size / mean captions per image)``
    images (at least one). With ``lengths`` (every item's caption length) and ``bucket``, images are
    bucketed by their longest caption, the length their batch is padded to: on the shapes benchmark
    (1-4 objects a scene) unbucketed image batches ran the decoder at half the captions/s. The image
    order, sharding, ``drop_last`` and resume are the bucket sampler's, counted in images:
    ``batch_size`` in :meth:`state_dict` is images a batch.
    """

    def __init__(
        self, images: Sequence[int], batch_size: int, lengths: Sequence[int] | None = None, **kwargs
    ):
        self._order, self._starts = _items_by_image(images, type(self).__name__)
        n_images = len(self._starts) - 1
        if lengths is None:
            kwargs["bucket"] = False
            image_lengths = [1] * n_images
        else:
            require(len(lengths) == len(images), f"{len(lengths)} lengths for {len(images)} items")
            by_item = np.asarray(lengths, dtype=np.int64)[self._order]  # grouped by image
            image_lengths = np.maximum.reduceat(by_item, self._starts[:-1]).tolist()
        per_batch = max(1, round(batch_size * n_images / len(images)))
        super().__init__(image_lengths, per_batch, **kwargs)

    def _all_batches(self) -> list[list[int]]:
        order, starts = self._order, self._starts
        return [
            [i for k in batch for i in order[starts[k] : starts[k + 1]]] for batch in super()._all_batches()
        ]


class OncePerImageSampler(BucketBatchSampler):
    """Each image once an epoch (as its first caption's item), ``batch_size`` distinct images a batch.

    For objectives that score against every reference of an image (SCST samples k captions per image
    and rewards them against all its references): over caption items each image would come ~5 times
    an epoch, 5x the steps for the same images, and a batch could hold one image twice. The order,
    sharding, ``drop_last`` and resume are the bucket sampler's, counted in images.
    """

    def __init__(self, images: Sequence[int], batch_size: int, **kwargs):
        order, starts = _items_by_image(images, type(self).__name__)
        self._first = [order[k] for k in starts[:-1]]
        kwargs["bucket"] = False
        super().__init__([1] * len(self._first), batch_size, **kwargs)

    def _all_batches(self) -> list[list[int]]:
        return [[self._first[k] for k in batch] for batch in super()._all_batches()]


def _items_by_image(images: Sequence[int], sampler: str) -> tuple[list[int], list[int]]:
    """``order, starts``: the items of the k-th distinct image are ``order[starts[k]:starts[k + 1]]``."""
    images = torch.as_tensor(images, dtype=torch.long)
    require(len(images) > 0, f"{sampler} got no items; the split is empty")
    order = torch.sort(images, stable=True).indices
    counts = torch.unique_consecutive(images[order], return_counts=True)[1]
    return order.tolist(), [0, *counts.cumsum(0).tolist()]
