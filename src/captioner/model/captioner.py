"""The full Show, Attend and Tell model: an optional CNN encoder plus the attention decoder."""

from __future__ import annotations

from torch import Tensor, nn

from captioner.errors import ConfigError, require
from captioner.model.decoder import Decoder, DecoderOutput
from captioner.model.encoder import Encoder


class Captioner(nn.Module):
    """Encoder + decoder; ``encoder=None`` for training on cached features only."""

    def __init__(self, encoder: Encoder | None, decoder: Decoder):
        super().__init__()
        require(
            encoder is None or encoder.out_dim == decoder.encoder_dim,
            f"the decoder's encoder_dim ({decoder.encoder_dim}) does not match the encoder's out_dim "
            f"({encoder.out_dim if encoder is not None else None}); build both with captioner.model.build.build_model",
        )
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Images (B,3,H,W) -> annotations (B,L=h*w,D) and the grid (h, w) to unflatten alphas."""
        return self.annotate(images, features=False)

    def annotate(self, inputs: Tensor, features: bool) -> tuple[Tensor, tuple[int, int]]:
        """Annotations (B,L=h*w,D) and their grid (h, w) from images or from cached feature maps.

        Images (B,3,H,W) run the whole encoder; cached maps (B,h,w,C) of its frozen prefix run only its
        trainable tail (``Encoder.apply_tail``: nothing for a frozen encoder, whose maps are the annotations).
        """
        if features:
            fmap = inputs if self.encoder is None else self.encoder.apply_tail(inputs)
        else:
            require(
                self.encoder is not None, "Captioner has no encoder; pass cached features (B,h,w,D) instead"
            )
            fmap = self.encoder(inputs)
        b, h, w, d = fmap.shape
        return fmap.reshape(b, h * w, d), (h, w)

    def is_features(self, x: Tensor) -> bool:
        """Whether a 4-dim input is a cached feature map (B,h,w,C) rather than images (B,3,H,W)."""
        if self.encoder is None:
            return True
        d = self.encoder.prefix_dim
        looks_images, looks_features = x.shape[1] == 3, x.shape[-1] == d
        if looks_images != looks_features:
            return looks_features
        raise ConfigError(
            f"input of shape {tuple(x.shape)} could be images (B,3,H,W) or features (B,h,w,{d}); "
            "pass features=True or features=False to Captioner.forward"
        )

    def forward(
        self,
        inputs: Tensor,
        captions: Tensor,
        teacher_forcing: float = 1.0,
        features: bool | None = None,
        image_index: Tensor | None = None,
    ) -> DecoderOutput:
        """Teacher-forced pass from images (B,3,H,W) or cached features (B,h,w,C) of the encoder's prefix.

        ``features=None`` infers the kind from the shape (channels-first with 3 channels = images, last
        dim == the prefix's channels ``encoder.prefix_dim`` = features) and raises if both readings fit;
        pass it explicitly to skip the guess. ``image_index`` (N,) gives each of N captions its row of
        ``inputs`` (batches of whole images: each image is encoded once for all its captions); None = one
        row per caption.
        """
        annotations = self.caption_annotations(inputs, features, image_index)
        return self.decoder(annotations, captions, teacher_forcing)

    def caption_annotations(
        self, inputs: Tensor, features: bool | None = None, image_index: Tensor | None = None
    ) -> Tensor:
        """Annotations (N,L,D), one row per caption, for ``forward``'s arguments (also the fast path's)."""
        require(inputs.dim() == 4, f"Captioner input must be 4-dim, got shape {tuple(inputs.shape)}")
        if features is None:
            features = self.is_features(inputs)
        annotations, _ = self.annotate(inputs, features)
        if image_index is not None:
            annotations = annotations.index_select(0, image_index)
        return annotations
