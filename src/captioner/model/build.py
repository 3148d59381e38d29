"""Build a captioner from the ``encoder`` and ``decoder`` config groups, and switch fine-tuning on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from captioner.model.captioner import Captioner
from captioner.model.decoder import Decoder
from captioner.model.encoder import build_encoder


def build_model(
    encoder_cfg: Mapping[str, Any], decoder_cfg: Mapping[str, Any], vocab: Any
) -> torch.nn.Module:
    """Encoder from the ``encoder`` group, decoder from the ``decoder`` group sized to ``vocab`` (a Vocab)."""
    encoder = build_encoder(**plain(encoder_cfg))
    decoder = Decoder(
        vocab_size=len(vocab), encoder_dim=encoder.out_dim, **plain(decoder_cfg), vocab_itos=vocab.itos
    )
    return Captioner(encoder, decoder)


def update_finetune(model: torch.nn.Module, step: int) -> None:
    """Start fine-tuning the encoder once ``finetune_start_step`` is reached."""
    enc = getattr(model, "encoder", None)
    if enc is not None and enc.finetune:
        enc.set_finetune(step >= enc.finetune_start_step)


def plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A config node (or mapping) as a plain, resolved dict of keyword arguments."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
