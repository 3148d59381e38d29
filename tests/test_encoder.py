"""Encoder zoo: every arch yields annotations, pretrained weights load offline, freezing works."""

from __future__ import annotations

import inspect
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import group_yaml
from torch import nn

from captioner.errors import ConfigError, DataError
from captioner.model import ARCHS, Captioner, Decoder, Encoder, build_encoder

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"

# Heavy archs (slow to build/run on CPU); each family keeps a fast member in the default run.
HEAVY = {"resnet101", "resnet152", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "densenet161"}
HEAVY |= {"densenet201", "densenet169"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails like an offline machine would."""

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: refused {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in ARCHS]
)
def test_every_arch_yields_annotations(arch: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 224, 224)
    plain = build_encoder(arch, pretrained=False).eval()
    with torch.no_grad():
        fmap = plain(images)
    b, h, w, d = fmap.shape
    assert (b, d) == (2, plain.out_dim) and h == w and h >= 1
    assert torch.isfinite(fmap).all()

    sized = build_encoder(arch, pretrained=False, encoder_dim=16, encoder_size=3).eval()
    model = Captioner(
        sized, Decoder(vocab_size=10, encoder_dim=16, embed_dim=8, hidden_dim=8, attention_dim=8)
    )
    with torch.no_grad():
        annotations, grid = model.encode(images)
    assert annotations.shape == (2, 9, 16) and grid == (3, 3)


def test_non_square_input_and_upsampling() -> None:
    enc = build_encoder("shufflenet_v2_x0_5", pretrained=False).eval()
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 224, 320)).shape[1:3] == (7, 10)
    up = build_encoder("shufflenet_v2_x0_5", pretrained=False, encoder_size=12).eval()
    with torch.no_grad():
        assert up(torch.rand(1, 3, 224, 320)).shape[1:3] == (12, 12)


@pytest.mark.parametrize(
    "arch, layer, shape",
    [
        ("mobilenet_v2", "features.13", (14, 14, 96)),
        ("resnet18", "layer3", (14, 14, 256)),
        ("shufflenet_v2_x0_5", "stage3", (14, 14, 96)),
        ("mnasnet0_5", "layers.10", (14, 14, 40)),
    ],
)
def test_layer_ends_the_backbone_early(arch: str, layer: str, shape: tuple) -> None:
    torch.manual_seed(0)
    enc = build_encoder(arch, pretrained=False, layer=layer).eval()
    with torch.no_grad():
        fmap = enc(torch.rand(1, 3, 224, 224))
    assert fmap.shape[1:] == shape and enc.out_dim == shape[-1]


def test_layer_output_equals_the_full_trunk_prefix() -> None:
    """The cut backbone computes exactly what the same blocks compute inside the full network."""
    torch.manual_seed(0)
    full = build_encoder("mobilenet_v2", pretrained=False).eval()
    cut = build_encoder("mobilenet_v2", pretrained=False, layer="features.6").eval()
    prefix = {k: v for k, v in full.backbone.state_dict().items() if int(k.split(".")[0]) < 7}
    cut.backbone.load_state_dict({f"extractor.features.{k}": v for k, v in prefix.items()})
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected = full.backbone[:7]((images - full.mean) / full.std).permute(0, 2, 3, 1)
        assert torch.allclose(cut(images), expected, atol=1e-5)


def test_frozen_cut_backbone_keeps_batchnorm_still() -> None:
    enc = build_encoder("mobilenet_v2", pretrained=False, layer="features.4")
    enc.train()
    before = [m.running_mean.clone() for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    enc(torch.rand(2, 3, 64, 64))
    after = [m.running_mean for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert before and all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(p.requires_grad for p in enc.backbone.parameters())


def test_mobilenet_v2_pretrained_loads_offline_file(tmp_path, monkeypatch, no_network) -> None:
    if not WEIGHTS.is_file():
        pytest.skip(f"offline weights not found at {WEIGHTS} (clone ../shared beside the repo)")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / WEIGHTS.name).symlink_to(WEIGHTS.resolve())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    enc = build_encoder("mobilenet_v2", pretrained=True)
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    first_conv = enc.backbone[0][0].weight
    assert torch.equal(first_conv, state["features.0.0.weight"])
    file_sum = sum(v.double().sum() for k, v in state.items() if k.startswith("features."))
    enc_sum = sum(v.double().sum() for v in enc.backbone.state_dict().values())
    assert torch.isclose(enc_sum, file_sum)
    assert enc.out_dim == 1280


def test_missing_weights_is_one_line_error(tmp_path, monkeypatch, no_network) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DataError) as err:
        build_encoder("mobilenet_v2", pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert "mobilenet_v2-b0353104.pth" in msg and "hub/checkpoints" in msg
    assert "make weights" in msg and "encoder.pretrained=false" in msg


def _batchnorm_stats(enc: Encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in enc.backbone.state_dict().items()}


def _one_step(enc: Encoder) -> None:
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    enc.train()
    loss = enc(torch.rand(2, 3, 64, 64)).pow(2).mean()
    loss.backward()
    opt.step()


def test_finetune_updates_backbone() -> None:
    torch.manual_seed(0)
    enc = build_encoder("mobilenet_v3_small", pretrained=False, finetune=True)
    before = _batchnorm_stats(enc)
    _one_step(enc)
    after = enc.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)


def test_frozen_backbone_and_batchnorm_stay_fixed_in_train_mode() -> None:
    torch.manual_seed(0)
    enc = build_encoder("mobilenet_v3_small", pretrained=False, encoder_dim=8, finetune=False)
    head_before = enc.project.weight.clone()
    before = _batchnorm_stats(enc)
    _one_step(enc)
    assert enc.training
    assert all(not m.training for m in enc.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    after = enc.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, enc.project.weight)  # the new 1x1 conv always trains


def test_finetune_start_step_defers_unfreezing() -> None:
    enc = build_encoder("shufflenet_v2_x0_5", pretrained=False, finetune=True, finetune_start_step=100)
    enc.train()
    assert not enc.finetune_active and not any(p.requires_grad for p in enc.backbone.parameters())
    enc.set_finetune(True)
    assert all(p.requires_grad for p in enc.backbone.parameters())
    assert all(m.training for m in enc.backbone.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"arch": "resnet9000"}, "mnasnet1_3"),
        ({"arch": "resnet18", "encoder_dim": 0}, "encoder_dim=0"),
        ({"arch": "resnet18", "encoder_size": -2}, "encoder_size=-2"),
        ({"arch": "resnet18", "finetune_start_step": -1}, "finetune_start_step=-1"),
        ({"arch": "resnet18", "layer": "layer9"}, "layer1, layer2, layer3, layer4"),
        ({"arch": "mobilenet_v2", "layer": 13}, "encoder.layer=13"),
        # fine-tuning from a block after encoder.layer, from the first block, from no block
        (
            {"arch": "resnet18", "layer": "layer3", "finetune_from": "layer4"},
            "maxpool, layer1, layer2, layer3",
        ),
        ({"arch": "mobilenet_v2", "finetune": True, "finetune_from": "features.0"}, "features.1, features.2"),
        ({"arch": "mobilenet_v2", "finetune_from": "block7"}, "encoder.finetune_from='block7'"),
    ],
)
def test_bad_encoder_config(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_encoder(pretrained=False, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_encoder_configs_map_to_build_encoder() -> None:
    conf = Path(__file__).resolve().parents[1] / "conf" / "encoder"
    kwargs = list(inspect.signature(build_encoder).parameters)
    files = sorted(conf.glob("*.yaml"))
    assert {f.stem for f in files} >= set(ARCHS) | {"shufflenet", "mobilenet_v2", "resnet50"}
    for f in files:
        cfg = group_yaml(f)
        assert set(cfg) <= set(kwargs), f.name
        assert cfg["arch"] in ARCHS and (f.stem == cfg["arch"] or f.stem == "shufflenet")


def _partial(**kwargs) -> Encoder:
    """mobilenet_v2 cut at features.6 (a 4x4 map at 64 px), fine-tuning features.4-6 only."""
    torch.manual_seed(0)
    return build_encoder(
        "mobilenet_v2",
        pretrained=False,
        layer="features.6",
        finetune=True,
        finetune_from="features.4",
        **kwargs,
    )


def test_finetune_from_trains_only_the_blocks_from_it() -> None:
    enc = _partial()
    prefix = ("features.0.", "features.1.", "features.2.", "features.3.")
    params = {k.removeprefix("extractor."): v for k, v in enc.backbone.named_parameters()}
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert trainable == {k for k in params if not k.startswith(prefix)}
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    _one_step(enc)
    after = {k.removeprefix("extractor."): v for k, v in enc.backbone.state_dict().items()}
    before = {k.removeprefix("extractor."): v for k, v in before.items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith(prefix) for k in changed)  # the prefix: weights and BN stats
    assert any(k.startswith("features.4.") and k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)  # the fine-tuned blocks' BN is in train mode
    assert all(p.grad is None for k, p in params.items() if k.startswith(prefix))


def test_partial_fine_tune_keeps_checkpoint_keys_and_splits_exactly() -> None:
    """The split shares the backbone's modules: same state_dict, and prefix + tail equals forward."""
    enc = _partial(encoder_dim=8, encoder_size=2).eval()
    whole = build_encoder("mobilenet_v2", pretrained=False, layer="features.6", finetune=True, encoder_dim=8)
    assert enc.state_dict().keys() == whole.state_dict().keys()
    ids = {id(p) for p in enc.parameters()}
    assert all(id(p) in ids for part in enc._split for p in part.parameters())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        cached = enc.encode_prefix(images)
        assert cached.shape == (2, 16, 16, 24) and enc.prefix_dim == 24  # features.3 map, stride 4
        assert torch.equal(enc.apply_tail(cached), enc(images))
        assert enc(images).shape == (2, 2, 2, 8)
    assert enc.tail_start == "features.4" and enc.cacheable


def test_frozen_prefix_module_holds_only_frozen_parameters() -> None:
    enc = _partial().train()
    prefix = enc.frozen_prefix()
    assert not any(p.requires_grad for p in prefix.parameters())
    assert any(p.requires_grad for p in enc.parameters())
    prefix.train()  # the cache switches the module back to its mode after encoding
    assert all(not m.training for m in prefix.modules() if isinstance(m, nn.BatchNorm2d))
    whole = build_encoder("mobilenet_v3_small", pretrained=False, finetune=True)
    with pytest.raises(ConfigError, match="finetune_from"):
        whole.frozen_prefix()
    frozen = build_encoder("mobilenet_v3_small", pretrained=False)
    assert frozen.frozen_prefix() is frozen and frozen.tail_start is None  # the cache holds annotations


def test_finetune_from_is_read_only_with_finetune() -> None:
    """A sweep scale sets it for every version: a frozen version stays the frozen encoder it was."""
    torch.manual_seed(0)
    plain = build_encoder("mobilenet_v2", pretrained=False, layer="features.6")
    torch.manual_seed(0)
    frozen = build_encoder("mobilenet_v2", pretrained=False, layer="features.6", finetune_from="features.4")
    assert frozen.tail_start is None and not any(p.requires_grad for p in frozen.parameters())
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain.eval()(images), frozen.eval()(images))


def test_delayed_partial_fine_tune_thaws_only_the_tail() -> None:
    enc = _partial(finetune_start_step=10)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.set_finetune(True)
    enc.train()
    thawed = {n.split(".")[2] for n, p in enc.backbone.named_parameters() if p.requires_grad}
    assert thawed == {"4", "5", "6"}  # extractor.features.<block>...
    assert all(not m.training for m in enc._split[0].modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in enc._split[1].modules() if isinstance(m, nn.BatchNorm2d))


def test_partial_fine_tune_of_a_whole_densenet_keeps_its_final_relu() -> None:
    torch.manual_seed(0)
    enc = build_encoder("densenet121", pretrained=False, finetune=True, finetune_from="features.norm5").eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = enc.apply_tail(enc.encode_prefix(images))
        assert (out >= 0).all() and torch.equal(out, enc(images))
        expected = enc.backbone((images - enc.mean) / enc.std).permute(0, 2, 3, 1)
        assert torch.allclose(out, expected, atol=1e-6)
