"""A cache of frozen-encoder maps, computed once per encoder setting and reused.

What is cached is the output of the encoder's frozen prefix (``Encoder.frozen_prefix``): the annotations
of a frozen encoder, or, when a trainable tail follows (fine-tuned blocks, a new 1x1 projection), the
trunk's map where that tail starts; training and evaluation apply the tail to it.

Layout, under the prepared folder::

    features/<key>/<split>.npy        fp16 (N, h, w, D), row i = image ids[i]
    features/<key>/<split>.ids.json   the N image ids, in row order
    features/<key>/meta.json          key fields + finished splits; written LAST, atomically
    features/<key>/.lock              flock'd by the process computing splits (parallel workers wait)

``<key>`` hashes everything the features depend on: the encoder setting (``pipeline.feature_key``:
the prefix's cut included), the image size, the eval transform, the prepared data's content hash and
its image index (so re-preparing images at another size gives another key). Changing any of them
selects a new folder; old ones stay untouched.
A split counts only once meta.json lists it, so an unfinished computation is never used. It is
resumed instead: rows go straight into ``.<split>.partial.npy`` (a memory map with the final file's
header) and ``.<split>.progress.json`` records, after each batch is flushed, how many rows are done
and with which batch size; a rerun encodes only the remaining batches (same batch boundaries, so the
finished file is byte-identical to an uninterrupted build) and renames the file into place.

Only valid for frozen modules under the eval transform: augmentation or fine-tuning would change
the features every step. Under DDP call ``ensure`` on rank 0 first, then barrier, then on the others.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from captioner.data.annotations import load_annotations
from captioner.data.records import (
    IMAGES_INDEX,
    content_hash,
    read_json,
    read_manifest,
    write_json_atomic,
)
from captioner.errors import ConfigError, DataError
from captioner.progress import log_line
from captioner.progress import progress as progress_bar

META = "meta.json"
LOCK = ".lock"  # held (flock) while splits are computed


class FeatureReader:
    """Cached annotations by image id: ``reader[image_id]`` -> fp16 tensor (h, w, D)."""

    def __init__(self, folder: str | Path, splits: Sequence[str]):
        self.folder = Path(folder)
        self.splits = list(splits)
        self._where: dict[str, tuple[str, int]] = {}
        for split in self.splits:
            ids = read_json(self.folder / f"{split}.ids.json", "feature ids")
            self._where.update((image_id, (split, row)) for row, image_id in enumerate(ids))
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as full copies into every DataLoader worker; reopen instead.
        return {**self.__dict__, "_arrays": {}}

    def _array(self, split: str) -> np.ndarray:
        if split not in self._arrays:
            self._arrays[split] = np.load(self.folder / f"{split}.npy", mmap_mode="r")
        return self._arrays[split]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, image_id: str) -> torch.Tensor:
        if image_id not in self._where:
            raise DataError(f"image {image_id!r} is not in the feature cache {self.folder}")
        split, row = self._where[image_id]
        return torch.from_numpy(np.array(self._array(split)[row]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(h, w, D) of one image's annotations."""
        return tuple(self._array(self.splits[0]).shape[1:])


class FeatureCache:
    """Frozen-encoder features of a prepared dataset for one encoder setting (see module doc)."""

    def __init__(self, root: str | Path, encoder_key: dict, image_size: int = 224, num_workers: int = 0):
        if encoder_key.get("finetune") or encoder_key.get("fine_tune"):
            raise ConfigError(
                "feature caching needs a frozen encoder but encoder.finetune=true; "
                "set encoder.finetune=false or trainer.cache_features=false"
            )
        from captioner.data.transforms import build_eval_transform

        self.root = Path(root)
        self.image_size = image_size
        self.num_workers = num_workers
        self.transform = build_eval_transform(image_size)
        manifest = read_manifest(self.root)
        index = self.root / IMAGES_INDEX
        self.key_fields = {
            "encoder": encoder_key,
            "image_size": image_size,
            "transform": repr(self.transform),
            "data": manifest.get("content_hash") or content_hash(list(load_annotations(self.root).values())),
            "images": hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else None,
        }
        blob = json.dumps(self.key_fields, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:16]
        self.folder = self.root / "features" / self.key

    def done_splits(self) -> list[str]:
        """Splits whose features are complete (listed in meta.json)."""
        if not (self.folder / META).exists():
            return []
        return list(read_json(self.folder / META, "feature cache meta")["splits"])

    def ensure(
        self,
        encoder: nn.Module,
        split: str | Sequence[str],
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> FeatureReader:
        """Compute the missing splits with ``encoder``; return a reader over every finished split."""
        trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise ConfigError(
                f"cannot cache features of an encoder with trainable parameters ({trainable[0]}, ...): "
                "they would change during training; cache only its frozen part "
                "(Encoder.frozen_prefix()), or set trainer.cache_features=false"
            )
        splits = [split] if isinstance(split, str) else list(split)
        if any(s not in self.done_splits() for s in splits):
            # One builder at a time: parallel sweep workers whose versions share a prefix would
            # otherwise write the same partial file and rename it from under each other. A waiting
            # process finds the splits done when it gets the lock.
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / LOCK, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                missing = [s for s in splits if s not in self.done_splits()]
                was_training = encoder.training
                encoder.eval()
                try:
                    for s in missing:
                        self._compute(encoder, s, batch_size, torch.device(device), progress)
                finally:
                    encoder.train(was_training)
        return FeatureReader(self.folder, self.done_splits())

    def _compute(
        self, encoder: nn.Module, split: str, batch_size: int, device: torch.device, progress: bool
    ) -> None:
        from captioner.data.dataset import ImageDataset, collate_images

        dataset = ImageDataset(self.root, split, self.transform)
        ids = dataset.image_ids.tolist()
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{split}.partial.npy"
        progress_file = self.folder / f".{split}.progress.json"
        ids_hash = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
        done, out = 0, None
        state = json.loads(progress_file.read_text()) if progress_file.exists() else None
        if state and partial.exists() and state["ids"] == ids_hash and state["batch_size"] == batch_size:
            done, out = state["rows"], np.load(partial, mmap_mode="r+")
        desc = f"features {split}"
        if progress:
            log_line(
                f"{desc}: encoding {len(ids) - done} of {len(ids)} images" + (" (resuming)" if done else "")
            )
        # Start at a batch boundary of the same batch size: a batch's features can depend (in the last
        # bits) on what else is in the batch, and the cache must equal an uninterrupted build.
        remaining = Subset(dataset, range(done, len(dataset)))
        loader = DataLoader(
            remaining, batch_size=batch_size, num_workers=self.num_workers, collate_fn=collate_images
        )
        bar = progress_bar(total=len(ids), initial=done, desc=desc, unit="img", disable=not progress)
        with torch.inference_mode(), bar:
            for batch in loader:
                feats = encoder(batch["images"].to(device))
                if feats.dim() != 4:
                    raise ConfigError(
                        f"encoder returned shape {tuple(feats.shape)}; caching needs (B, h, w, D) annotations"
                    )
                feats = feats.to(torch.float16).cpu().numpy()
                if out is None:
                    shape = (len(dataset), *feats.shape[1:])
                    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
                    if progress:
                        log_line(
                            f"{desc}: {shape} fp16 = {np.prod(shape) * 2 / 2**30:.2f} GiB in {self.folder}"
                        )
                out[done : done + len(feats)] = feats
                done += len(feats)
                out.flush()  # the rows first, then the mark that vouches for them
                state = {"rows": done, "batch_size": batch_size, "ids": ids_hash}
                write_json_atomic(progress_file, state)
                bar.update(len(feats))
        out.flush()
        del out
        partial.replace(self.folder / f"{split}.npy")
        write_json_atomic(self.folder / f"{split}.ids.json", ids)
        progress_file.unlink()
        # meta.json last: only now does this split count as cached.
        splits = sorted(set(self.done_splits()) | {split})
        write_json_atomic(self.folder / META, {"key": self.key, **self.key_fields, "splits": splits})
