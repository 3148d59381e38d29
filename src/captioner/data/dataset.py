"""Torch datasets over a prepared folder: (image, caption) pairs for training, images for evaluation.

Items are dicts; :func:`collate_captions` / :func:`collate_images` stack them into batches::

    train batch: images (B,3,S,S) uint8 after a TrainTransform, else float [0,1] (see transforms.as_float)
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

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from captioner.data.annotations import Annotations, load_annotations
from captioner.data.records import ImageRecord, read_manifest
from captioner.data.store import ImageStore
from captioner.data.transforms import TrainTransform
from captioner.data.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab
from captioner.errors import DataError, require

FlipWords = Callable[[list[str]], list[str]]


def split_rows(annotations: Annotations, root: str | Path, split: str) -> np.ndarray:
    """The annotation rows of one split, or a DataError naming the split and the splits present."""
    rows = annotations.rows(split)
    if not len(rows):
        raise DataError(
            f"split {split!r} has no images in {root}; splits present: {annotations.splits}; use one of them"
        )
    return rows


class SplitRecords(Sequence[ImageRecord]):
    """The records of one split as a read-only list, built on access from the shared arrays."""

    def __init__(self, annotations: Annotations, rows: np.ndarray):
        self.annotations = annotations
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # noqa: ANN001 - int only; slicing is not needed
        return self.annotations.record(int(self.rows[i]))


def encode_captions(
    annotations: Annotations, captions: np.ndarray, vocab: Vocab, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """``Vocab.encode(tokens, max_len)`` of many captions at once: flat int32 ids and their (n+1) offsets.

    Vectorised because a Python loop over COCO's 600k training captions takes seconds at every start.
    """
    lookup = np.array([vocab.stoi.get(w, UNK_ID) for w in annotations.words], dtype=np.int32)
    first = annotations.caption_starts[captions]
    words = np.minimum(annotations.caption_starts[captions + 1] - first, max_len)
    starts = np.zeros(len(captions) + 1, dtype=np.int64)
    np.cumsum(words + 2, out=starts[1:])
    ids = np.empty(int(starts[-1]), dtype=np.int32)
    ids[starts[:-1]] = START_ID
    ids[starts[1:] - 1] = END_ID
    owner = np.repeat(np.arange(len(captions)), words)
    within = np.arange(len(owner)) - np.repeat(np.cumsum(words) - words, words)  # word position in caption
    ids[starts[owner] + 1 + within] = lookup[annotations.token_ids[first[owner] + within]]
    return ids, starts


def default_flip_words(root: str | Path) -> FlipWords | None:
    """``shapes_language.flip_tokens`` for the generated shapes set (left/right words swap), else None."""
    if read_manifest(root).get("source", {}).get("format") != "shapes":
        return None
    from captioner.data.shapes_language import flip_tokens  # lazily: only the shapes set needs it

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
        if isinstance(self.transform, TrainTransform):  # it works on PIL (see captioner.data.transforms)
            image = self.store.pil(image_id)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return "image", self.transform(image)
        image = self.store.tensor(image_id)
        if flip:
            image = TF.hflip(image)
        image = self.transform(image) if self.transform is not None else image.float() / 255
        return "image", image


class CaptionDataset(Dataset):
    """Training data: one item per (image, caption) pair, caption ids capped at ``max_len`` words.

    ``transform`` is a :class:`~captioner.data.transforms.TrainTransform` (or any callable); when it
    has ``hflip > 0`` this dataset draws the flip, flips the image and passes the caption through
    ``flip_words`` (default: ``shapes_language.flip_tokens`` on the shapes set, no word change elsewhere).
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
        group_by_image: bool = False,
    ):
        require(max_len >= 1, f"max_len={max_len} must be >= 1 (words per training caption)")
        self.root = Path(root)
        self.split = split
        self.annotations = load_annotations(self.root)
        rows = split_rows(self.annotations, self.root, split)
        self.records = SplitRecords(self.annotations, rows)
        self.image_ids = self.annotations.ids[rows]
        self.source = _ImageSource(self.root, self.image_ids, transform, features)
        self.max_len = max_len
        self.vocab = vocab
        self.hflip = float(getattr(transform, "hflip", 0.0)) if features is None else 0.0
        self.flip_words = flip_words if flip_words is not None else default_flip_words(self.root)
        # One item per (image, caption): numpy arrays, not Python lists, so forked workers share them.
        per_image = np.diff(self.annotations.image_starts)[rows]
        first = np.repeat(np.cumsum(per_image) - per_image, per_image)
        j = np.arange(int(per_image.sum())) - first
        self.pairs = np.stack(
            [np.repeat(np.arange(len(rows)), per_image), j], axis=1
        )  # (record i, caption j)
        self.captions = np.repeat(self.annotations.image_starts[rows], per_image) + j  # global caption index
        # Ids are encoded up front so the sampler has lengths.
        self._ids, self._id_starts = encode_captions(self.annotations, self.captions, vocab, max_len)
        self.lengths = np.diff(self._id_starts).tolist()
        # With whole-image batches (ImageBatchSampler) an image's items come one after another in one
        # worker: they share the first one's flip and augmented view, loaded once (collate_grouped).
        self.group_by_image = group_by_image
        self._last: tuple | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i = self.pairs[index][0]
        image_id = str(self.image_ids[i])
        shared = self.group_by_image and self._last is not None and self._last[0] == i
        # torch's RNG, so DataLoader's per-worker seeding makes the flips reproducible.
        flip = self._last[1] if shared else self.hflip > 0 and torch.rand(()).item() < self.hflip
        if flip and self.flip_words is not None:
            tokens = self.annotations.caption_tokens(int(self.captions[index]))
            caption = torch.tensor(self.vocab.encode(self.flip_words(tokens), self.max_len), dtype=torch.long)
        else:
            caption = torch.from_numpy(self._ids[self._id_starts[index] : self._id_starts[index + 1]]).long()
        key, value = self._last[2:] if shared else self.source.load(image_id, flip)
        if self.group_by_image:
            self._last = (i, flip, key, value)
        return {key: value, "caption": caption, "length": len(caption), "image_id": image_id, "index": index}


class ImageDataset(Dataset):
    """Evaluation data: one item per image; its references via :meth:`references` (never capped)."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None, features: Any = None):
        self.root = Path(root)
        self.split = split
        self.annotations = load_annotations(self.root)
        rows = split_rows(self.annotations, self.root, split)
        self.records = SplitRecords(self.annotations, rows)
        self.image_ids = self.annotations.ids[rows]
        self.source = _ImageSource(self.root, self.image_ids, transform, features)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        image_id = str(self.image_ids[index])
        key, value = self.source.load(image_id)
        return {key: value, "image_id": image_id, "index": index}

    def references(self, image_id: str) -> list[list[str]]:
        """All reference captions of an image, tokenised, exactly as prepared."""
        return self.annotations.tokens(self.annotations.row(image_id))

    def record(self, image_id: str) -> ImageRecord:
        """The full record (captions, tokens, meta ground truth) of an image."""
        return self.annotations[image_id]


def _stack_inputs(items: list[dict], batch: dict) -> None:
    if "image" in items[0]:
        batch["images"] = torch.stack([it["image"] for it in items])
    else:
        batch["features"] = torch.stack([it["features"] for it in items])


def collate_captions(items: list[dict]) -> dict:
    """Stack inputs and right-pad captions with PAD_ID to the longest in the batch."""
    batch: dict = {}
    _stack_inputs(items, batch)
    return _add_captions(items, batch)


def collate_grouped(items: list[dict]) -> dict:
    """Like :func:`collate_captions`, but each image's input once: ``image_index`` maps captions to inputs.

    For :class:`~captioner.data.sampler.ImageBatchSampler` batches, whose items of one image carry the
    same view (``CaptionDataset(group_by_image=True)``); ``Captioner.forward(image_index=...)`` encodes
    the distinct images and gives each caption its image's annotations.
    """
    slot: dict[str, int] = {}  # image id -> its row among the distinct inputs
    distinct = []
    for it in items:
        if it["image_id"] not in slot:
            slot[it["image_id"]] = len(distinct)
            distinct.append(it)
    batch: dict = {"image_index": torch.tensor([slot[it["image_id"]] for it in items], dtype=torch.long)}
    _stack_inputs(distinct, batch)
    return _add_captions(items, batch)


def _add_captions(items: list[dict], batch: dict) -> dict:
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
