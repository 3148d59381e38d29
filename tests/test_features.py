"""FeatureCache: computed once, reused, keyed on the encoder setting, fp16 on disk, crash-safe."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch
from test_dataset import make_prepared
from torch import nn

from captioner.data.dataset import CaptionDataset, ImageDataset
from captioner.data.features import META, FeatureCache
from captioner.data.loaders import build_loaders
from captioner.errors import ConfigError

KEY = {"name": "toy", "pretrained": True, "finetune": False}


class CountingEncoder(nn.Module):
    """A frozen toy encoder: 4x4 average pool to (B, h, w, 3); counts forward calls."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.calls = 0
        self.out_dim = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (nn.functional.avg_pool2d(images, 4) * self.scale).permute(0, 2, 3, 1)


@pytest.fixture
def prepared(tmp_path):
    return tmp_path, make_prepared(tmp_path, {"train": 3, "val": 2})


def test_computed_once_then_reused(prepared):
    root, vocab = prepared
    encoder = CountingEncoder()
    cache = FeatureCache(root, KEY, image_size=16)
    reader = cache.ensure(encoder, ["train", "val"], batch_size=2, progress=False)
    calls = encoder.calls
    assert calls == 3  # 2 train batches + 1 val batch
    reader = FeatureCache(root, KEY, image_size=16).ensure(encoder, ["train", "val"], progress=False)
    assert encoder.calls == calls
    assert reader.shape == (4, 4, 3) and len(reader) == 5
    expected = encoder(ImageDataset(root, "val", cache.transform)[1]["image"][None])[0]
    assert torch.allclose(reader["val1"].float(), expected, atol=1e-3)
    assert np.load(cache.folder / "train.npy", mmap_mode="r").dtype == np.float16
    assert reader["train0"].dtype == torch.float16
    assert "_arrays" in vars(reader) and reader._arrays  # maps are open now...
    assert pickle.loads(pickle.dumps(reader))._arrays == {}  # ...yet workers get no copy of them

    item = CaptionDataset(root, "train", vocab, features=reader)[0]
    assert item["features"].dtype == torch.float32 and "image" not in item
    off = {"hflip": 0.0, "color_jitter": 0.0, "crop_scale_min": 1.0}
    train, evals = build_loaders(root, vocab, 2, image_size=16, features=reader, augment=off)
    assert next(iter(train))["features"].shape[1:] == (4, 4, 3)
    assert next(iter(evals["val"]))["features"].shape == (2, 4, 4, 3)
    with pytest.raises(ConfigError, match="augment"):
        build_loaders(root, vocab, 2, image_size=16, features=reader, augment={"hflip": 0.5})


def test_changed_key_recomputes_into_new_folder(prepared):
    root, _ = prepared
    encoder = CountingEncoder()
    old = FeatureCache(root, KEY, image_size=16)
    old.ensure(encoder, "val", progress=False)
    before = (old.folder / "val.npy").read_bytes()
    for cache in (FeatureCache(root, {**KEY, "name": "other"}, 16), FeatureCache(root, KEY, image_size=32)):
        calls = encoder.calls
        cache.ensure(encoder, "val", progress=False)
        assert encoder.calls > calls and cache.folder != old.folder
    assert (old.folder / "val.npy").read_bytes() == before
    assert len(list((root / "features").iterdir())) == 3


def test_interrupted_cache_without_meta_is_recomputed(prepared):
    root, _ = prepared
    encoder = CountingEncoder()
    cache = FeatureCache(root, KEY, image_size=16)
    cache.ensure(encoder, "val", progress=False)
    (cache.folder / META).unlink()  # as if the process died before publishing
    np.save(cache.folder / "val.npy", np.zeros((2, 4, 4, 3), np.float16))  # garbage left behind
    calls = encoder.calls
    reader = cache.ensure(encoder, "val", progress=False)
    assert encoder.calls > calls
    assert reader["val0"].float().abs().sum() > 0


def test_fine_tuned_encoder_cannot_be_cached(prepared):
    root, _ = prepared
    with pytest.raises(ConfigError, match="frozen"):
        FeatureCache(root, {**KEY, "finetune": True})
    encoder = CountingEncoder()
    FeatureCache(root, KEY, image_size=16).ensure(encoder, "val", progress=False)
    encoder.scale.requires_grad_(True)  # refused even though this key's cache already exists
    with pytest.raises(ConfigError, match="trainable"):
        FeatureCache(root, KEY, image_size=16).ensure(encoder, "val", progress=False)


class Interrupt(Exception):
    """Stands in for a kill during encoding."""


def test_interrupted_build_resumes_and_equals_an_uninterrupted_one(tmp_path):
    root = tmp_path / "data"
    make_prepared(root, {"train": 7, "val": 1})
    whole = FeatureCache(root, KEY, image_size=16)
    whole.ensure(CountingEncoder(), "train", batch_size=2, progress=False)
    expected = (whole.folder / "train.npy").read_bytes()
    (whole.folder / "train.npy").unlink()
    (whole.folder / META).unlink()

    class Dies(CountingEncoder):
        def forward(self, images):
            if self.calls == 2:
                raise Interrupt
            return super().forward(images)

    cache = FeatureCache(root, KEY, image_size=16)
    with pytest.raises(Interrupt):
        cache.ensure(Dies(), "train", batch_size=2, progress=False)
    assert cache.done_splits() == [] and not (cache.folder / "train.npy").exists()
    encoder = CountingEncoder()
    reader = cache.ensure(encoder, "train", batch_size=2, progress=True)
    assert encoder.calls == 2  # batches 3 and 4 of 4: the first two were kept
    assert (cache.folder / "train.npy").read_bytes() == expected
    assert len(reader) == 7 and sorted(p.name for p in cache.folder.iterdir()) == [
        ".lock",
        "meta.json",
        "train.ids.json",
        "train.npy",
    ]


def test_parallel_builders_of_one_cache_encode_it_once(prepared):
    """Two sweep workers whose versions share a cache key: one encodes, the other waits and reads it
    (without the lock both wrote .train.partial.npy and one rename failed: FileNotFoundError)."""
    root, _ = prepared

    class Slow(CountingEncoder):
        def forward(self, images):
            time.sleep(0.2)
            return super().forward(images)

    encoders, readers, errors = [Slow(), Slow()], [None, None], []

    def build(k: int) -> None:
        try:
            readers[k] = FeatureCache(root, KEY, image_size=16).ensure(
                encoders[k], ["train", "val"], 2, progress=False
            )
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(e.calls for e in encoders) == 3  # 2 train batches + 1 val batch, once in all
    assert all(len(r) == 5 for r in readers) and torch.equal(readers[0]["val1"], readers[1]["val1"])


def test_resume_with_another_batch_size_starts_over(tmp_path):
    make_prepared(tmp_path, {"train": 5})
    cache = FeatureCache(tmp_path, KEY, image_size=16)

    class Dies(CountingEncoder):
        def forward(self, images):
            if self.calls == 1:
                raise Interrupt
            return super().forward(images)

    with pytest.raises(Interrupt):
        cache.ensure(Dies(), "train", batch_size=2, progress=False)
    encoder = CountingEncoder()
    cache.ensure(encoder, "train", batch_size=4, progress=False)
    assert encoder.calls == 2  # all 5 images again, in batches of 4


def test_progress_without_a_terminal_prints_size_and_eta_lines(prepared, capsys, caplog):
    root, _ = prepared
    with caplog.at_level("INFO", logger="captioner"):
        FeatureCache(root, KEY, image_size=16).ensure(CountingEncoder(), "train", batch_size=2)
    assert "encoding 3 of 3 images" in caplog.text and "GiB" in caplog.text
    err = capsys.readouterr().err
    assert "features train: 3/3" in err and "\r" not in err


def _config(**encoder) -> dict:
    """The parts of a resolved train config the feature cache reads."""
    enc = {"arch": "mobilenet_v2", "pretrained": False, "encoder_dim": None, "encoder_size": None}
    enc |= {"finetune": False, "finetune_start_step": 0, "layer": "features.6", "finetune_from": None}
    return {
        "encoder": {**enc, **encoder},
        "trainer": {"seed": 0, "cache_features": True, "encode_batch_size": 4},
        "data": {"loader": {"image_size": 32, "num_workers": 0}},
    }


def test_the_cache_holds_the_frozen_prefix_keyed_on_where_it_ends(prepared):
    """Partial fine-tuning caches the prefix's map, keyed on its cut; tail-only settings share it."""
    from captioner.data.pipeline import cached_features, feature_key, uses_feature_cache
    from captioner.model.encoder import build_encoder

    root, _ = prepared

    def cache(**encoder):
        config = _config(**encoder)
        torch.manual_seed(0)
        model = build_encoder(**config["encoder"])
        assert uses_feature_cache(config)
        reader = cached_features(root, config, model, ["val"], torch.device("cpu"))
        return reader, model, feature_key(config, model)

    frozen, _, frozen_key = cache()
    assert cache(finetune_from="features.4")[0].folder == frozen.folder  # unread when frozen
    assert frozen_key == {
        **{k: v for k, v in _config()["encoder"].items() if k != "finetune_from"},
        "init_seed": 0,
    }  # the key frozen caches had before finetune_from existed
    partial, model, key = cache(finetune=True, finetune_from="features.4")
    assert key["prefix_ends_before"] == "features.4" and partial.folder != frozen.folder
    assert partial.shape == (8, 8, model.prefix_dim)  # features.3's map at 32 px
    other_tail = cache(finetune=True, finetune_from="features.4", encoder_dim=8, finetune_start_step=5)[0]
    assert other_tail.folder == partial.folder  # the tail's settings do not change the prefix
    assert cache(finetune=True, finetune_from="features.5")[0].folder != partial.folder
    projected, model_p, key_p = cache(encoder_dim=8)  # a frozen trunk, then a trainable 1x1 conv
    assert key_p["prefix_ends_before"] == "project" and projected.folder not in (
        frozen.folder,
        partial.folder,
    )

    # Applying the tail to the cached maps gives the encoder's output up to the cache's fp16 rounding.
    images = ImageDataset(root, "val", FeatureCache(root, KEY, 32).transform)[0]["image"][None]
    for reader, encoder in ((partial, model), (projected, model_p)):
        encoder.eval()
        with torch.no_grad():
            from_cache = encoder.apply_tail(reader["val0"].float()[None])
            assert torch.allclose(from_cache, encoder(images), atol=2e-2, rtol=1e-2)


def test_a_whole_trunk_fine_tune_or_cache_features_false_encodes_every_step():
    from captioner.data.pipeline import uses_feature_cache

    assert not uses_feature_cache(_config(finetune=True))
    assert not uses_feature_cache(
        {**_config(finetune=True, finetune_from="features.4"), "trainer": {"cache_features": False}}
    )
    assert uses_feature_cache(_config(encoder_dim=8))  # v23: frozen trunk + new 1x1 conv
    old = _config()
    del old["encoder"]["finetune_from"]  # a checkpoint written before the key existed
    assert uses_feature_cache(old)
