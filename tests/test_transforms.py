"""Train/eval transforms: shape and range, validation, and the caption-aware horizontal flip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_dataset import make_prepared, two_tone

from captioner.data.dataset import CaptionDataset
from captioner.data.transforms import RandomHueRotate, as_float, build_eval_transform, build_train_transform
from captioner.data.vocab import Vocab
from captioner.errors import ConfigError

NO_AUG = {"color_jitter": 0.0, "crop_scale_min": 1.0}


def swap_left_right(tokens: list[str]) -> list[str]:
    return [{"left": "right", "right": "left"}.get(t, t) for t in tokens]


@pytest.mark.parametrize("source", ["tensor", "pil"])
def test_outputs_float_unit_range_square(source):
    torch.manual_seed(0)
    pil = two_tone(48)
    image = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1) if source == "tensor" else pil
    heavy = build_train_transform(
        32, color_jitter=0.4, noise_std=0.1, optical_strength=0.5, crop_scale_min=0.5
    )
    for transform in (heavy, build_eval_transform(32)):
        out = transform(image)
        assert (
            type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 32, 32)
        )  # noise: float
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_eval_transform_is_deterministic_plain_resize():
    out = build_eval_transform(16)(two_tone(64))
    assert torch.equal(out, build_eval_transform(16)(two_tone(64)))
    assert out[0, :, :7].mean() > 0.99 and out[2, :, 9:].mean() > 0.99  # no crop: halves stay halves


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hflip": 1.5}, "hflip"),
        ({"color_jitter": -0.1}, "color_jitter"),
        ({"noise_std": 2.0}, "noise_std"),
        ({"optical_strength": 3.0}, "optical_strength"),
        ({"crop_scale_min": 0.0}, "crop_scale_min"),
    ],
)
def test_out_of_range_values_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_train_transform(224, **kwargs)


def test_hflip_flips_image_and_swaps_left_right_words(tmp_path):
    vocab = make_prepared(tmp_path, {"train": 1})
    transform = build_train_transform(32, hflip=1.0, **NO_AUG)
    ds = CaptionDataset(tmp_path, "train", vocab, transform=transform, flip_words=swap_left_right)
    item = ds[0]
    assert item["image"].dtype == torch.uint8  # a quarter of float32's bytes between processes
    image = as_float(item["image"])
    assert image[2, :, :16].mean() > 0.99 and image[0, :, 16:].mean() > 0.99  # blue now left
    assert vocab.decode(item["caption"].tolist()) == ["red", "right", "blue", "left"]
    transform = build_train_transform(32, hflip=0.0, **NO_AUG)
    ds = CaptionDataset(tmp_path, "train", vocab, transform=transform, flip_words=swap_left_right)
    assert vocab.decode(ds[0]["caption"].tolist()) == ["red", "left", "blue", "right"]
    assert as_float(ds[0]["image"])[0, :, :16].mean() > 0.99


def test_hflip_on_other_datasets_keeps_words(tmp_path):
    vocab = make_prepared(tmp_path, {"train": 1}, source="flickr8k")
    ds = CaptionDataset(tmp_path, "train", vocab, transform=build_train_transform(32, hflip=1.0, **NO_AUG))
    assert ds.flip_words is None
    item = ds[0]
    assert as_float(item["image"])[2, :, :16].mean() > 0.99
    assert vocab.decode(item["caption"].tolist()) == ["red", "left", "blue", "right"]


@pytest.mark.skipif(
    importlib.util.find_spec("captioner.data.shapes") is None, reason="captioner.data.shapes not written yet"
)
def test_shapes_dataset_flips_captions_with_real_flip_tokens(tmp_path):
    from captioner.data.shapes import generate_dataset
    from captioner.data.shapes_language import flip_tokens

    generate_dataset(
        tmp_path, n_train=3, n_val=0, n_test=0, n_test_novel=0, image_size=64, captions_per_image=3
    )
    vocab = Vocab.load(tmp_path / "vocab.json")
    flipped = CaptionDataset(
        tmp_path, "train", vocab, transform=build_train_transform(64, hflip=1.0, **NO_AUG)
    )
    plain = CaptionDataset(tmp_path, "train", vocab, transform=build_train_transform(64, hflip=0.0, **NO_AUG))
    assert flipped.flip_words is flip_tokens
    for i in range(len(flipped)):
        record = flipped.records[flipped.pairs[i][0]]
        tokens = record.tokens[flipped.pairs[i][1]]
        assert flipped[i]["caption"].tolist() == vocab.encode(flip_tokens(tokens), 30)
        assert torch.allclose(flipped[i]["image"], plain[i]["image"].flip(-1), atol=1e-6)
    assert any("left" in t or "right" in t for r in flipped.records for t in r.tokens)


def test_hue_rotation_keeps_greys_turns_red_towards_green_and_is_identity_at_zero():
    pil = two_tone(32, left=(200, 40, 40), right=(128, 128, 128))
    assert np.array_equal(np.asarray(RandomHueRotate(0.0)(pil)), np.asarray(pil))
    torch.manual_seed(0)
    rotated = [np.asarray(RandomHueRotate(0.5)(pil)).astype(int) for _ in range(20)]
    for out in rotated:
        assert np.abs(out[:, 16:] - 128).max() <= 1  # grey is on the rotation axis
    assert any(out[0, 0, 1] > out[0, 0, 0] for out in rotated)  # some angle makes the red greener
    assert len({tuple(out[0, 0]) for out in rotated}) > 10  # the angle is drawn per call


def test_default_jitter_is_mild_and_centred_on_the_input():
    # Colour jitter of 0.1 keeps each channel's mean within ~15% of the input's, and averages out.
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(40, 216, (3, 48, 48), dtype=np.uint8))
    plain = build_eval_transform(32)(image)
    torch.manual_seed(0)
    transform = build_train_transform(32, hflip=0.0, crop_scale_min=1.0)
    assert transform(image).dtype == torch.uint8
    outs = torch.stack([as_float(transform(image)) for _ in range(200)])
    assert outs.shape[1:] == (3, 32, 32)
    means = outs.mean(dim=(2, 3))
    assert (means - plain.mean(dim=(1, 2))).abs().max() < 0.15
    assert (means.mean(0) - plain.mean(dim=(1, 2))).abs().max() < 0.02
    assert means.std(0).min() > 0.005  # it does jitter


def test_train_transform_gives_the_same_image_from_a_tensor_or_pil():
    pil = two_tone(48)
    tensor = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    transform = build_train_transform(32, hflip=0.0)
    torch.manual_seed(3)
    a = transform(pil)
    torch.manual_seed(3)
    assert torch.equal(a, transform(tensor))


def test_as_float_scales_uint8_to_unit_range_and_keeps_float():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.allclose(as_float(x), x.float() / 255) and as_float(x).max() == 1.0
    f = torch.rand(2, 3)
    assert torch.equal(as_float(f), f) and as_float(f.half()).dtype == torch.float32
