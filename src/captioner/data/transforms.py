"""Image transforms (torchvision.transforms.v2): the seed's weak training augmentations and the eval resize.

Both take a uint8 ``(3, H, W)`` tensor (``ImageStore.tensor``) or a PIL image. The eval transform
returns a float ``(3, S, S)`` tensor in [0, 1]; the training transform returns uint8 ``(3, S, S)``
(float only when it adds noise), and :func:`as_float` scales a batch to [0, 1] on the device: a uint8
batch is a quarter of the bytes DataLoader workers pass through shared memory (9.6 instead of 38.5 MB
per 64 images at 224 px). ImageNet normalisation happens inside the encoder.

The training pipeline works on the PIL image (uint8, in C) until its last step: measured on one core
at 224 px, torchvision's float-tensor ColorJitter took ~3.8 ms of a ~5 ms image, 3.3 ms of it the
hue step (RGB -> HSV -> RGB in torch ops; PIL's HSV round trip is still 1.9 ms). Brightness, contrast
and saturation run as torchvision's PIL kernels (~0.5 ms); hue is a rotation about the grey axis,
the W3C filter-effects ``hue-rotate`` matrix applied by PIL's ``convert("RGB", matrix)`` (0.12 ms),
instead of an HSV shift: the two agree on pure hues and differ slightly in how they treat
lightness, which matters little for a +-18 degree augmentation. Whole transform: ~1.6 ms (> 600 img/s).

Horizontal flip is NOT part of these pipelines: a flip changes what "left" and "right" mean in the
caption, so :class:`captioner.data.dataset.CaptionDataset` draws the flip itself and flips the words
with it. The training transform only carries the probability (``TrainTransform.hflip``).

On the shapes benchmark, crops and optical (affine/perspective) distortions can move or cut objects,
so its ground-truth boxes no longer match the image exactly; fine for training, never used for eval.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from captioner.errors import require

# At optical_strength=1 the distortions reach these bounds; the seed's useful range is about 0..0.3.
MAX_DEGREES, MAX_TRANSLATE, MAX_SCALE, MAX_SHEAR, MAX_PERSPECTIVE = 30.0, 0.2, 0.2, 15.0, 0.5


class TrainTransform(nn.Module):
    """The training pipeline plus the horizontal-flip probability the dataset applies itself."""

    def __init__(self, pipeline: v2.Compose, hflip: float):
        super().__init__()
        self.pipeline = pipeline
        self.hflip = hflip

    def forward(self, image) -> torch.Tensor:
        """uint8 (3,H,W) tensor or PIL image -> augmented uint8 (3,S,S), float with noise (no flip)."""
        if isinstance(image, torch.Tensor):  # every step before the last runs on PIL (module doc)
            image = TF.to_pil_image(image)
        return self.pipeline(image)

    def extra_repr(self) -> str:
        return f"hflip={self.hflip}"


class RandomHueRotate(nn.Module):
    """Rotate a PIL RGB image's colours about the grey axis by a uniform angle in +-``hue`` turns.

    ``hue`` has ColorJitter's meaning (0.5 = half a turn). The matrix is the W3C filter-effects
    ``feColorMatrix type="hueRotate"``; PIL applies it in C on uint8, ~30x faster than the HSV route.
    """

    def __init__(self, hue: float):
        super().__init__()
        self.hue = hue

    def forward(self, image: Image.Image) -> Image.Image:
        """The rotated image (torch's RNG draws the angle, so DataLoader worker seeding applies)."""
        turn = float(torch.empty(()).uniform_(-self.hue, self.hue))
        c, s = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
        matrix = (
            0.213 + 0.787 * c - 0.213 * s, 0.715 - 0.715 * c - 0.715 * s, 0.072 - 0.072 * c + 0.928 * s, 0.0,
            0.213 - 0.213 * c + 0.143 * s, 0.715 + 0.285 * c + 0.140 * s, 0.072 - 0.072 * c - 0.283 * s, 0.0,
            0.213 - 0.213 * c - 0.787 * s, 0.715 - 0.715 * c + 0.715 * s, 0.072 + 0.928 * c + 0.072 * s, 0.0,
        )  # fmt: skip
        return image.convert("RGB", matrix)

    def extra_repr(self) -> str:
        return f"hue={self.hue}"


def _resize(image_size: int, crop_scale_min: float) -> nn.Module:
    # A plain resize to S x S (no centre crop) so nothing a caption mentions is cut off at the border.
    if crop_scale_min >= 1.0:
        return v2.Resize((image_size, image_size), antialias=True)
    return v2.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), antialias=True)


def build_train_transform(
    image_size: int,
    hflip: float = 0.5,
    color_jitter: float = 0.1,
    noise_std: float = 0.0,
    optical_strength: float = 0.0,
    crop_scale_min: float = 0.9,
) -> TrainTransform:
    """Weak crop, optical distortion of strength s, colour jitter and Gaussian noise (flip: see module doc)."""
    require(image_size >= 16, f"image_size={image_size} is too small; use >= 16 (224 is the usual)")
    require(0.0 <= hflip <= 1.0, f"data.augment.hflip={hflip} is a probability; use a value in [0, 1]")
    require(0.0 <= color_jitter <= 1.0, f"data.augment.color_jitter={color_jitter} out of range; use [0, 1]")
    require(0.0 <= noise_std <= 1.0, f"data.augment.noise_std={noise_std} out of range; use [0, 1] (0 = off)")
    require(
        0.0 <= optical_strength <= 1.0,
        f"data.augment.optical_strength={optical_strength} out of range; use [0, 1] (0 = off, seed used 0.2)",
    )
    require(
        0.08 <= crop_scale_min <= 1.0,
        f"data.augment.crop_scale_min={crop_scale_min} out of range; use [0.08, 1] (1 = plain resize)",
    )
    steps: list[nn.Module] = [_resize(image_size, crop_scale_min)]
    if optical_strength > 0:
        s = optical_strength
        steps += [
            v2.RandomPerspective(distortion_scale=MAX_PERSPECTIVE * s, p=0.5),
            v2.RandomAffine(
                degrees=MAX_DEGREES * s,
                translate=(MAX_TRANSLATE * s, MAX_TRANSLATE * s),
                scale=(1 - MAX_SCALE * s, 1 + MAX_SCALE * s),
                shear=MAX_SHEAR * s,
            ),
        ]
    if color_jitter > 0:
        c = color_jitter
        # Hue must stay in [0, 0.5]; hue shifts are stronger than the rest, so half.
        steps += [v2.ColorJitter(brightness=c, contrast=c, saturation=c), RandomHueRotate(min(c / 2, 0.5))]
    steps.append(v2.PILToTensor())
    if noise_std > 0:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.GaussianNoise(sigma=noise_std, clip=True)]
    steps.append(v2.ToPureTensor())
    return TrainTransform(v2.Compose(steps), hflip)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 scaled as ``v2.ToDtype(scale=True)`` does; float kept (as float32)."""
    return TF.to_dtype(images, torch.float32, scale=True) if images.dtype == torch.uint8 else images.float()


def build_eval_transform(image_size: int) -> v2.Compose:
    """Deterministic resize to (S, S) and conversion to float [0, 1]."""
    require(image_size >= 16, f"image_size={image_size} is too small; use >= 16 (224 is the usual)")
    return v2.Compose(
        [v2.ToImage(), _resize(image_size, 1.0), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
    )
