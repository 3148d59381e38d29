"""Torch datasets over a prepared folder: (image, caption) pairs for training, images for evaluation.

Items are dicts; :func:`collate_captions` / :func:`collate_images` stack them into batches::

    train batch: images (B,3,S,S) float [0,1]  | features (B,h,w,D) float32
                 captions (B,T) long, PAD_ID=0 after <end>;  lengths (B,) = ids incl. <start>/<end>
                 image_ids list[str];  indices (B,) pair index into the dataset
    eval batch:  images | features;  image_ids;  indices

A batch holds exactly one of ``images`` (run the encoder) or ``features`` (cached frozen-encoder
annotations, see :mod:`captioner.data.features`). Training captions are capped at ``max_len`` words;
evaluation references come from :meth:`ImageDataset.references`, always complete and never capped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from captioner.data.records import ImageRecord, read_annotations, read_manifest
from captioner.data.store import ImageStore
from captioner.data.vocab import PAD_ID, Vocab
from captioner.errors import DataError, require

FlipWords = Callable[[list[str]], list[str]]


def split_records(root: str | Path, split: str) -> list[ImageRecord]:
    """The records of one split, or a DataError naming the split and the splits present."""
    records = read_annotations(root)
    chosen = [r for r in records if r.split == split]
    if not chosen:
        present = sorted({r.split for r in records})
        raise DataError(
            f"split {split!r} has no images in {root}; splits present: {present}; use one of them"
        )
    return chosen


def default_flip_words(root: str | Path) -> FlipWords | None:
    """``shapes.flip_tokens`` for the generated shapes set (left/right words swap), else None."""
    if read_manifest(root).get("source", {}).get("format") != "shapes":
        return None
    from captioner.data.shapes import flip_tokens  # lazily: only the shapes set needs it

    return flip_tokens


class _ImageSource:
    """Gives each image as a transformed tensor or its cached features (float32), by id."""

    def __init__(self, root: Path, ids: Sequence[str], transform: Callable | None, features: Any):
        self.transform = transform
        self.features = features
        if features is not None:
            missing = [i for i in ids if i not in features]
            if missing:
                raise DataError(
                    f"feature cache lacks {len(missing)} images of {root} (e.g. {missing[0]!r}); "
                    "call FeatureCache.ensure for this split"
                )
            self.store = None
        else:
            self.store = ImageStore(root)

    def load(self, image_id: str, flip: bool = False) -> tuple[str, torch.Tensor]:
        if self.features is not None:
            return "features", self.features[image_id].float()
        image = self.store.tensor(image_id)
        if flip:
            image = TF.hflip(image)
        image = self.transform(image) if self.transform is not None else image.float() / 255
        return "image", image


class CaptionDataset(Dataset):
    """Training data: one item per (image, caption) pair, caption ids capped at ``max_len`` words.

    ``transform`` is a :class:`~captioner.data.transforms.TrainTransform` (or any callable); when it
    has ``hflip > 0`` this dataset draws the flip, flips the image and passes the caption through
    ``flip_words`` (default: ``shapes.flip_tokens`` on the shapes set, no word change elsewhere).
    With ``features`` (a :class:`~captioner.data.features.FeatureReader`) images are not read and
    no augmentation applies: the cache holds eval-transform features.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        vocab: Vocab,
        max_len: int = 30,
        transform: Callable | None = None,
        features: Any = None,
        flip_words: FlipWords | None = None,
    ):
        require(max_len >= 1, f"max_len={max_len} must be >= 1 (words per training caption)")
        self.root = Path(root)
        self.split = split
        self.records = split_records(self.root, split)
        self.source = _ImageSource(self.root, [r.id for r in self.records], transform, features)
        self.max_len = max_len
        self.vocab = vocab
        self.hflip = float(getattr(transform, "hflip", 0.0)) if features is None else 0.0
        self.flip_words = flip_words if flip_words is not None else default_flip_words(self.root)
        # (record index, caption index) per item; ids are encoded up front so the sampler has lengths.
        self.pairs = [(i, j) for i, r in enumerate(self.records) for j in range(len(r.tokens))]
        self.ids = [vocab.encode(self.records[i].tokens[j], max_len) for i, j in self.pairs]
        self.lengths = [len(ids) for ids in self.ids]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, j = self.pairs[index]
        record = self.records[i]
        # torch's RNG, so DataLoader's per-worker seeding makes the flips reproducible.
        flip = self.hflip > 0 and torch.rand(()).item() < self.hflip
        ids = self.ids[index]
        if flip and self.flip_words is not None:
            ids = self.vocab.encode(self.flip_words(record.tokens[j]), self.max_len)
        key, value = self.source.load(record.id, flip)
        return {
            key: value,
            "caption": torch.tensor(ids, dtype=torch.long),
            "length": len(ids),
            "image_id": record.id,
            "index": index,
        }


class ImageDataset(Dataset):
    """Evaluation data: one item per image; its references via :meth:`references` (never capped)."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None, features: Any = None):
        self.root = Path(root)
        self.split = split
        self.records = split_records(self.root, split)
        self.source = _ImageSource(self.root, [r.id for r in self.records], transform, features)
        self._by_id = {r.id: r for r in self.records}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        key, value = self.source.load(record.id)
        return {key: value, "image_id": record.id, "index": index}

    def references(self, image_id: str) -> list[list[str]]:
        """All reference captions of an image, tokenised, exactly as prepared."""
        return self._by_id[image_id].tokens

    def record(self, image_id: str) -> ImageRecord:
        """The full record (captions, tokens, meta ground truth) of an image."""
        return self._by_id[image_id]


def _stack_inputs(items: list[dict], batch: dict) -> None:
    if "image" in items[0]:
        batch["images"] = torch.stack([it["image"] for it in items])
    else:
        batch["features"] = torch.stack([it["features"] for it in items])


def collate_captions(items: list[dict]) -> dict:
    """Stack inputs and right-pad captions with PAD_ID to the longest in the batch."""
    batch: dict = {}
    _stack_inputs(items, batch)
    lengths = torch.tensor([it["length"] for it in items], dtype=torch.long)
    captions = torch.full((len(items), int(lengths.max())), PAD_ID, dtype=torch.long)
    for row, it in enumerate(items):
        captions[row, : it["length"]] = it["caption"]
    batch.update(
        captions=captions,
        lengths=lengths,
        image_ids=[it["image_id"] for it in items],
        indices=torch.tensor([it["index"] for it in items], dtype=torch.long),
    )
    return batch


def collate_images(items: list[dict]) -> dict:
    """Stack inputs of an evaluation batch; ids stay a list of strings."""
    batch: dict = {}
    _stack_inputs(items, batch)
    batch.update(
        image_ids=[it["image_id"] for it in items],
        indices=torch.tensor([it["index"] for it in items], dtype=torch.long),
    )
    return batch
