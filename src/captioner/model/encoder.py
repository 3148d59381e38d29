"""CNN encoder: a torchvision ImageNet classifier with its head cut off, giving annotation vectors.

This module cuts the trunk and splits it into a frozen prefix and a trainable tail; which ImageNet
weights each arch loads, and their file, is :mod:`captioner.runtime.hub_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from captioner.errors import ConfigError, require
from captioner.runtime.hub_weights import ARCHS, ensure_weights, pretrained_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Trailing classifier-head modules dropped from families without a `features`/`layers` trunk.
_HEAD_TYPES = (nn.Linear, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten)


def load_classifier(arch: str, pretrained: bool) -> nn.Module:
    """Build the torchvision classifier (ImageNet weights from the hub cache when ``pretrained``)."""
    if not pretrained:
        return models.get_model(arch, weights=None)
    ensure_weights(arch)
    return models.get_model(arch, weights=pretrained_weights(arch))


class _UpToLayer(nn.Module):
    """The classifier cut after one of its modules (torchvision's FX feature extractor, which prunes the rest)."""

    def __init__(self, net: nn.Module, arch: str, layer: str):
        super().__init__()
        blocks = trunk_layers(net)
        require(
            layer in blocks,
            f"encoder.layer={layer!r} is not a block of {arch}; valid: {', '.join(blocks)} (or null for the last)",
        )
        self.extractor = create_feature_extractor(net, return_nodes={layer: "out"})

    def forward(self, x: Tensor) -> Tensor:
        return self.extractor(x)["out"]


def trunk_layers(net: nn.Module) -> list[str]:
    """Names ``encoder.layer`` accepts: the trunk's blocks (``features.13``, ``layer3``, ``features.denseblock3``)."""
    trunk = next((getattr(net, n) for n in ("features", "layers") if hasattr(net, n)), None)
    if trunk is not None:  # mobilenet, squeezenet, densenet, mnasnet: blocks inside one Sequential
        prefix = "features" if hasattr(net, "features") else "layers"
        return [f"{prefix}.{name}" for name, _ in trunk.named_children()]
    return [name for name, m in net.named_children() if not isinstance(m, _HEAD_TYPES)]


def _trunk_blocks(net: nn.Module) -> list[nn.Module]:
    """The trunk's blocks as modules, in the order of :func:`trunk_layers` (their forward runs them in turn)."""
    trunk = next((getattr(net, n) for n in ("features", "layers") if hasattr(net, n)), None)
    if trunk is not None:
        return list(trunk.children())
    return [m for m in net.children() if not isinstance(m, _HEAD_TYPES)]


def _trunk(net: nn.Module, arch: str, layer: str | None = None) -> nn.Module:
    """The convolutional trunk of a torchvision classifier: everything before global pooling.

    With ``layer`` the trunk ends after that block: an earlier, finer feature map (mobilenet_v2
    ``features.13``: 14 x 14 x 96 at 224 px instead of 7 x 7 x 1280) that keeps colour and shape.
    """
    if layer is not None:
        return _UpToLayer(net, arch, layer)
    if isinstance(net, models.DenseNet):
        # DenseNet applies its final ReLU in forward(), not inside `features`.
        return nn.Sequential(net.features, nn.ReLU(inplace=False))
    if hasattr(net, "features"):  # squeezenet, mobilenet_v2/v3
        return net.features
    if hasattr(net, "layers"):  # mnasnet
        return net.layers
    children = list(net.children())  # resnet/resnext/wide_resnet, shufflenet_v2
    while children and isinstance(children[-1], _HEAD_TYPES):
        children.pop()
    return nn.Sequential(*children)


class Encoder(nn.Module):
    """Images (B,3,H,W) in [0,1] -> channels-last annotations (B,h,w,D) (paper Sec. 3.1.1).

    ``layer`` ends the backbone after a named block (null: its last). ``encoder_dim`` adds a new (always
    trainable) 1x1 conv to D channels; ``encoder_size`` average-pools down or bilinearly upsamples the
    map to S x S. Without it a non-square image gives an h x w map. The backbone is frozen
    (requires_grad off, BatchNorm in eval) unless fine-tuning is active; the training loop calls
    ``set_finetune(finetune and step >= finetune_start_step)``. ``finetune_from`` (read only with
    ``finetune``) fine-tunes just the trunk's blocks from that one to ``layer``; the earlier blocks
    stay frozen for good.

    The encoder is a frozen prefix and a trainable tail: :meth:`encode_prefix` is what the feature
    cache stores, :meth:`apply_tail` turns those maps into annotations, and ``forward`` equals the two
    in turn (without the fp16 rounding of the cache). ``tail_start`` names where the tail begins.
    """

    def __init__(
        self,
        arch: str,
        pretrained: bool = True,
        encoder_dim: int | None = None,
        encoder_size: int | None = None,
        finetune: bool = False,
        finetune_start_step: int = 0,
        layer: str | None = None,
        finetune_from: str | None = None,
    ):
        super().__init__()
        require(arch in ARCHS, f"encoder.arch={arch!r} is unknown; valid: {', '.join(ARCHS)}")
        require(
            encoder_dim is None or (isinstance(encoder_dim, int) and encoder_dim > 0),
            f"encoder.encoder_dim={encoder_dim!r} must be a positive int or null (keep the CNN's channels)",
        )
        require(
            encoder_size is None or (isinstance(encoder_size, int) and encoder_size > 0),
            f"encoder.encoder_size={encoder_size!r} must be a positive int or null (keep the CNN's grid)",
        )
        require(
            isinstance(finetune_start_step, int) and finetune_start_step >= 0,
            f"encoder.finetune_start_step={finetune_start_step!r} must be an int >= 0",
        )
        self.arch = arch
        self.pretrained = pretrained
        self.finetune = bool(finetune)
        self.finetune_start_step = finetune_start_step
        self.encoder_size = encoder_size
        if layer is not None and not isinstance(layer, str):
            raise ConfigError(f"encoder.layer={layer!r} must be a block name such as features.13, or null")
        self.layer = layer
        net = load_classifier(arch, pretrained)
        self.backbone = _trunk(net, arch, layer)
        self.finetune_from = finetune_from
        # (frozen blocks, fine-tuned blocks) when fine-tuning from a block, else None. They are views
        # sharing self.backbone's modules, kept out of the module tree so checkpoints keep their keys.
        split = self._split_trunk(net, finetune_from)  # checked even unread: a sweep scale sets it for all
        self._split = split if self.finetune else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone_dim = self._probe_channels(self.backbone)
        self.project = nn.Conv2d(self.backbone_dim, encoder_dim, kernel_size=1) if encoder_dim else None
        self.out_dim: int = encoder_dim or self.backbone_dim
        if self._split is not None:
            self.prefix_dim = self._probe_channels(self._split[0])
        else:
            self.prefix_dim = self.backbone_dim if self.tail_start == "project" else self.out_dim
        self.finetune_active = True
        self.set_finetune(self.finetune and finetune_start_step == 0)

    def _split_trunk(self, net: nn.Module, start: str | None) -> tuple[nn.Sequential, nn.Sequential] | None:
        """The trunk (up to ``layer``) cut before block ``start``: (frozen blocks, fine-tuned blocks)."""
        if start is None:
            return None
        names = trunk_layers(net)
        end = names.index(self.layer) + 1 if self.layer is not None else len(names)
        valid = names[1:end]  # the first block would leave nothing frozen: that is null
        if start not in valid:
            up_to = f"encoder.layer={self.layer}" if self.layer is not None else "the last block"
            raise ConfigError(
                f"encoder.finetune_from={start!r} is not a block of {self.arch} after the first and up to "
                f"{up_to}; valid: {', '.join(valid)} (or null: fine-tune the whole trunk)"
            )
        blocks = _trunk_blocks(net)[:end]
        cut = names.index(start)
        tail = blocks[cut:]
        if self.layer is None and isinstance(net, models.DenseNet):
            tail.append(self.backbone[1])  # the final ReLU DenseNet applies in forward()
        return nn.Sequential(*blocks[:cut]), nn.Sequential(*tail)

    @torch.no_grad()
    def _probe_channels(self, trunk: nn.Module) -> int:
        """Output channels of ``trunk``, found by a dry forward (no table to keep in sync with torchvision)."""
        was_training = trunk.training
        trunk.eval()  # eval so the probe does not touch BatchNorm running stats
        channels = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
        trunk.train(was_training)
        return int(channels)

    @property
    def tail_start(self) -> str | None:
        """Where the trainable tail after the cacheable prefix begins.

        A trunk block (fine-tuning from it), ``"project"`` (a frozen trunk, then the trainable 1x1 conv),
        or None: the tail is empty and cached maps are the annotations themselves (a frozen encoder, or
        one fine-tuned whole, which is never cached).
        """
        if self._split is not None:
            return self.finetune_from
        return "project" if self.project is not None and not self.finetune else None

    @property
    def cacheable(self) -> bool:
        """Whether a prefix of the encoder never trains, so its output can be cached (not a whole-trunk fine-tune)."""
        return not self.finetune or self._split is not None

    def set_finetune(self, active: bool) -> None:
        """Make the fine-tuned blocks trainable (active) or frozen with BatchNorm statistics fixed."""
        self.finetune_active = bool(active)
        for p in self.backbone.parameters():
            p.requires_grad_(self.finetune_active)
        if self._split is not None:
            for p in self._split[0].parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """Set train/eval mode; frozen blocks stay in eval so their BatchNorm stats never drift."""
        super().train(mode)
        if not self.finetune_active:
            self.backbone.eval()
        elif self._split is not None:
            self._split[0].eval()
        return self

    def _frozen_trunk(self, images: Tensor) -> Tensor:
        """Normalised images through the trunk blocks that never train (channels first, no graph)."""
        x = (images - self.mean) / self.std
        if self._split is not None:
            frozen = self._split[0]
        elif not self.finetune:
            frozen = self.backbone
        else:
            return x  # the whole trunk is fine-tuned
        with torch.no_grad():  # no graph through frozen blocks: saves activation memory and time
            return frozen(x)

    def _tuned_trunk(self, x: Tensor) -> Tensor:
        """The fine-tuned blocks (none for a frozen encoder); a graph only while fine-tuning is active."""
        tuned = self._split[1] if self._split is not None else self.backbone if self.finetune else None
        if tuned is None:
            return x
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune_active):
            return tuned(x)

    def _head(self, x: Tensor) -> Tensor:
        """Trunk map (B,C,h,w) -> annotations (B,S,S,D): the 1x1 projection, the resize, channels last."""
        if self.project is not None:
            x = self.project(x)
        if self.encoder_size is not None:
            s = self.encoder_size
            if x.shape[-2] >= s and x.shape[-1] >= s:
                x = F.adaptive_avg_pool2d(x, (s, s))
            else:
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x.permute(0, 2, 3, 1).contiguous()

    def forward(self, images: Tensor) -> Tensor:
        """(B,3,H,W) float in [0,1] -> (B,h,w,D) annotation map, channels last."""
        return self._head(self._tuned_trunk(self._frozen_trunk(images)))

    def encode_prefix(self, images: Tensor) -> Tensor:
        """What the feature cache stores: the frozen prefix's map (B,h,w,C), channels last."""
        if self.tail_start is None:
            return self(images)
        return self._frozen_trunk(images).permute(0, 2, 3, 1).contiguous()

    def apply_tail(self, fmap: Tensor) -> Tensor:
        """Cached prefix maps (B,h,w,C) -> annotations (B,h',w',D): the trainable tail (identity when empty)."""
        if self.tail_start is None:
            return fmap
        x = fmap.permute(0, 3, 1, 2).contiguous()  # contiguous: the same conv kernels as on images
        return self._head(self._tuned_trunk(x))

    def frozen_prefix(self) -> nn.Module:
        """The prefix as a module of its own, images -> :meth:`encode_prefix` maps, for the feature cache.

        Its parameters are the prefix's only (all frozen), so the cache's check that nothing it
        encodes can train holds; a whole-trunk fine-tune has no such prefix.
        """
        require(
            self.cacheable,
            "encoder.finetune=true with encoder.finetune_from=null fine-tunes the whole trunk: nothing "
            "to cache; set encoder.finetune_from to a block, or trainer.cache_features=false",
        )
        return self if self.tail_start is None else _FrozenPrefix(self)


class _FrozenPrefix(nn.Module):
    """:meth:`Encoder.encode_prefix` as a module whose parameters are the frozen prefix's only."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.trunk = encoder._split[0] if encoder._split is not None else encoder.backbone
        self._encoder = (encoder,)  # a tuple: not a registered child, so its tail stays out of parameters()

    def train(self, mode: bool = True) -> _FrozenPrefix:
        """The prefix never trains: its BatchNorm stays in eval whatever the mode."""
        self.training = mode
        self.trunk.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self._encoder[0].encode_prefix(images)


def build_encoder(
    arch: str,
    pretrained: bool = True,
    encoder_dim: int | None = None,
    encoder_size: int | None = None,
    finetune: bool = False,
    finetune_start_step: int = 0,
    layer: str | None = None,
    finetune_from: str | None = None,
) -> Encoder:
    """Build the encoder from the ``encoder`` config group (keys map 1:1 to these kwargs)."""
    return Encoder(
        arch, pretrained, encoder_dim, encoder_size, finetune, finetune_start_step, layer, finetune_from
    )
