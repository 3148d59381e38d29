"""CaptionDataset / ImageDataset items, collate padding, max_len capping and split errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.data.annotations import write_annotations
from captioner.data.dataset import CaptionDataset, ImageDataset, collate_captions, collate_images
from captioner.data.loaders import build_loaders
from captioner.data.records import MANIFEST, ImageRecord, content_hash, write_json_atomic
from captioner.data.store import ImageStoreWriter
from captioner.data.vocab import END_ID, PAD_ID, START_ID, Vocab
from captioner.errors import ConfigError, DataError


def two_tone(size: int = 32, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """An image whose left half and right half differ, so a horizontal flip is visible."""
    image = Image.new("RGB", (size, size), right)
    image.paste(Image.new("RGB", (size // 2, size), left), (0, 0))
    return image


def make_prepared(root: Path, splits: dict[str, int], source: str = "tiny", size: int = 32) -> Vocab:
    """A complete prepared folder: PNG store, annotations, vocab, manifest last."""
    records = []
    with ImageStoreWriter(root) as store:
        for split, n in splits.items():
            for k in range(n):
                image_id = f"{split}{k}"
                store.add_pil(image_id, two_tone(size), fmt="PNG")
                # Caption lengths vary with k so bucketing and padding have something to do.
                captions = ["red left blue right", "a " * (k % 5 + 1) + "square on the left"]
                tokens = [c.split() for c in captions]
                records.append(ImageRecord(image_id, split, image_id, captions, tokens))
    write_annotations(root, records)
    vocab = Vocab.build(t for r in records if r.split == "train" for t in r.tokens)
    vocab.save(root / "vocab.json")
    write_json_atomic(root / MANIFEST, {"source": {"format": source}, "content_hash": content_hash(records)})
    return vocab


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Vocab]:
    return tmp_path, make_prepared(tmp_path, {"train": 4, "val": 2})


def test_training_items_are_pairs_with_encoded_captions(prepared):
    root, vocab = prepared
    ds = CaptionDataset(root, "train", vocab)
    assert len(ds) == 8  # 4 images x 2 captions
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["caption"].tolist() == vocab.encode("red left blue right".split())
    assert item["length"] == 6 and item["image_id"] == "train0" and item["index"] == 0
    assert ds.lengths == [len(ds[i]["caption"]) for i in range(len(ds))]


def test_max_len_caps_training_targets_but_not_eval_references(prepared):
    root, vocab = prepared
    ds = CaptionDataset(root, "train", vocab, max_len=2)
    assert all(len(ds[i]["caption"]) == 4 for i in range(len(ds)))  # <start> w w <end>
    assert ds[0]["caption"][-1].item() == END_ID
    ev = ImageDataset(root, "train")
    assert ev.references("train3") == [
        ["red", "left", "blue", "right"],
        ["a"] * 4 + "square on the left".split(),
    ]


def test_collate_pads_with_pad_id(prepared):
    root, vocab = prepared
    ds = CaptionDataset(root, "train", vocab)
    batch = collate_captions([ds[0], ds[7]])  # 4 and 8 words
    assert batch["images"].shape == (2, 3, 32, 32)
    assert batch["lengths"].tolist() == [6, 10]
    assert batch["captions"].shape == (2, 10)
    assert batch["captions"][0, 6:].tolist() == [PAD_ID] * 4
    assert batch["captions"][:, 0].tolist() == [START_ID, START_ID]
    assert batch["image_ids"] == ["train0", "train3"] and batch["indices"].tolist() == [0, 7]


def test_eval_dataset_one_item_per_image(prepared):
    root, _ = prepared
    ds = ImageDataset(root, "val")
    assert len(ds) == 2
    batch = collate_images([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 32, 32) and batch["image_ids"] == ["val0", "val1"]
    assert ds.record("val1").split == "val"


def test_unknown_split_names_the_splits_present(prepared):
    root, vocab = prepared
    with pytest.raises(DataError, match=r"split 'test'.*\['train', 'val'\]"):
        CaptionDataset(root, "test", vocab)
    with pytest.raises(DataError, match="test_novel"):
        ImageDataset(root, "test_novel")


def test_build_loaders_wires_train_and_eval(prepared):
    root, vocab = prepared
    train, evals = build_loaders(root, vocab, batch_size=3, image_size=16, augment={"hflip": 0.0})
    assert set(evals) == {"val"}
    batches = list(train)
    assert len(batches) == len(train) == 3
    assert sorted(i for b in batches for i in b["indices"].tolist()) == list(range(8))
    assert batches[0]["images"].shape[1:] == (3, 16, 16)
    assert next(iter(evals["val"]))["images"].shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match="unknown augment keys"):
        build_loaders(root, vocab, batch_size=3, augment={"flip": 0.5})


def test_worker_augmentation_is_reproducible_per_seed(prepared):
    root, vocab = prepared
    augment = {"hflip": 0.5, "color_jitter": 0.3, "noise_std": 0.05}

    def first_batch(seed: int) -> torch.Tensor:
        train, _ = build_loaders(
            root, vocab, batch_size=8, image_size=16, num_workers=1, augment=augment, seed=seed
        )
        return next(iter(train))["images"]

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_whole_image_batches_load_each_image_once_with_one_flip_for_all_its_captions(tmp_path):
    root = tmp_path
    vocab = make_prepared(root, {"train": 4, "val": 2}, source="shapes")  # shapes: a flip swaps left/right
    train, _ = build_loaders(
        root, vocab, batch_size=4, image_size=16, group_by_image=True, augment={"hflip": 0.5}, seed=3
    )
    seen, flips = [], set()
    for batch in train:
        index, images = batch["image_index"], batch["images"]
        assert images.shape[0] == len(set(batch["image_ids"])) == int(index.max()) + 1  # each image once
        slots = {image_id: n for n, image_id in enumerate(dict.fromkeys(batch["image_ids"]))}
        assert index.tolist() == [slots[i] for i in batch["image_ids"]]
        for row, image_id in enumerate(batch["image_ids"]):
            words = vocab.decode(batch["captions"][row].tolist())
            flipped = images[index[row], 0, 0, 0] < images[index[row], 2, 0, 0]  # blue now on the left
            if words[:4] in (["red", "left", "blue", "right"], ["red", "right", "blue", "left"]):
                assert (words[1] == "right") == bool(flipped), (image_id, words)  # the words follow the flip
                flips.add(bool(flipped))
        seen += batch["indices"].tolist()
    assert sorted(seen) == list(range(8)) and flips == {True, False}
