"""What every decoding method does before and at each step: the start state, bans, log-probabilities."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from captioner.data.vocab import PAD_ID, START_ID, UNK_ID
from captioner.errors import require
from captioner.model.decoder import Decoder
from captioner.model.state import DecoderState


def banned_words(ban_unk: bool) -> list[int]:
    """Word ids never emitted: ``<pad>`` and ``<start>`` (never training targets), and ``<unk>`` if banned."""
    return [PAD_ID, START_ID, UNK_ID] if ban_unk else [PAD_ID, START_ID]


def log_probs(logits: Tensor, temperature: float, banned: list[int]) -> Tensor:
    """Temperature-scaled log-probabilities over the full vocabulary, banned words set to -inf."""
    # x / 1.0 == x exactly, so skipping the division at temperature 1 changes no number.
    logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    logp[:, banned] = -math.inf
    return logp


def prepare(decoder: Decoder, annotations: Tensor, copies: int) -> tuple[Tensor, DecoderState]:
    """The annotations' attention projection (one row per image) and the initial LSTM state, each
    state row repeated ``copies`` times: the copies share the image's annotations in ``Decoder.step``.
    """
    check_annotations(decoder, annotations)
    projected = decoder.project(annotations)  # once per image, not once per beam
    state = decoder.init_state(annotations)
    if copies > 1:
        state = state.repeat(copies)
    return projected, state


def check_annotations(decoder: Decoder, annotations: Tensor) -> None:
    """A one-line error unless ``annotations`` is (B, L, D) for this decoder."""
    require(
        annotations.dim() == 3 and annotations.shape[-1] == decoder.encoder_dim,
        f"decode annotations shape {tuple(annotations.shape)} must be (B, L, {decoder.encoder_dim}); "
        "flatten the encoder map with Captioner.encode first",
    )
