"""What one training step minimises (``objective=xe|scst``), and starting from another run's weights.

``xe`` is the paper's word cross-entropy (label smoothing, doubly stochastic attention term), plus the
REINFORCE and entropy terms of its variational bound when ``decoder.attention=hard`` (Sec. 4.1).
``scst`` is self-critical sequence training (Rennie et al. 2017), a second stage started from an XE
checkpoint with ``trainer.init_from`` (``captioner.train.scst``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocab
from captioner.errors import CheckpointError, ConfigError

OBJECTIVES = ("xe", "scst")


class CrossEntropy:
    """Teacher-forced word cross-entropy (+ hard attention's location terms): ``loss, parts = xe(...)``."""

    def __init__(self, cfg: DictConfig, decoder: torch.nn.Module):
        t, o = cfg.trainer, cfg.objective
        self.loss_kwargs = dict(
            smoothing=cfg.smoothing.value, att_gamma=t.att_gamma, att_reduction=t.att_reduction
        )
        self.location_kwargs = dict(
            reinforce=o.location_reinforce, entropy=o.location_entropy, decay=o.location_baseline_decay
        )
        self.decoder = decoder

    def __call__(
        self, model: torch.nn.Module, inputs: Tensor, batch: Mapping[str, Any], eps: float, features: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and detached parts of one (micro-)batch."""
        from captioner.model.hard_attention import location_loss
        from captioner.model.loss import caption_loss

        captions = batch["captions"].to(inputs.device, non_blocking=True)
        image_index = batch.get("image_index")  # batches of whole images (data.loader.group_by_image)
        if image_index is not None:
            image_index = image_index.to(inputs.device, non_blocking=True)
        out = model(inputs, captions, teacher_forcing=eps, features=features, image_index=image_index)
        loss, parts = caption_loss(out, captions, **self.loss_kwargs)
        if out.location_log_probs is not None:  # hard attention, a sampled minibatch
            extra, more = location_loss(
                out.logits,
                captions,
                out.location_log_probs,
                out.location_entropy,
                self.decoder.location_baseline,
                **self.location_kwargs,
            )
            loss = loss + extra
            parts.update(more)
        return loss, parts


def check_objective(cfg: DictConfig, distributed: bool) -> None:
    """Fail at start, in one line, on an objective the run cannot train (before data or weights load)."""
    o, t = cfg.objective, cfg.trainer
    if o.name not in OBJECTIVES:
        raise ConfigError(f"objective.name={o.name!r} is unknown; choose one of: {', '.join(OBJECTIVES)}")
    if t.init_from and not Path(t.init_from).is_file():
        raise ConfigError(
            f"trainer.init_from={t.init_from}: file not found; pass a checkpoint, e.g. runs/quality/soft/best.pt"
        )
    if o.name != "scst":
        return
    from captioner.train.scst import check_scst

    if not (t.init_from or t.resume):
        raise ConfigError(
            "objective=scst needs an XE-trained model: set trainer.init_from=<checkpoint> "
            "(e.g. runs/quality/soft/best.pt from `python train.py experiment=quality`)"
        )
    if distributed:
        raise ConfigError("objective=scst calls the decoder directly (no DDP wrapper); run it on one process")
    if cfg.data.loader.group_by_image:
        raise ConfigError(
            "objective=scst samples captions per image itself; set data.loader.group_by_image=false"
        )
    check_scst(o)


def build_objective(
    cfg: DictConfig, model: torch.nn.Module, vocab: Vocab, records: Mapping[str, ImageRecord]
) -> Any:
    """The objective's callable: ``loss, parts = objective(train_model, inputs, batch, eps, features)``."""
    if cfg.objective.name == "scst":
        from captioner.train.fast_path import use_fast_path
        from captioner.train.scst import SelfCritical

        fast = use_fast_path(cfg.trainer.compile, next(model.parameters()).device, model.decoder)
        return SelfCritical(cfg.objective, model, vocab, records, fast)
    return CrossEntropy(cfg, model.decoder)


def load_init_from(path: str, vocab: Vocab, cfg: DictConfig) -> dict[str, Any]:
    """``trainer.init_from``'s checkpoint, checked to fit this run's vocabulary and model config (one-line
    errors), as a resumed checkpoint is: before the data is built."""
    from captioner.runtime import checkpoint as ckpt
    from captioner.train.saved_config import check_checkpoint_fits

    state = ckpt.load_checkpoint(path)
    check_checkpoint_fits(state, vocab, cfg, f"trainer.init_from={path}")
    return state


def init_from(model: torch.nn.Module, state: Mapping[str, Any], path: str) -> None:
    """Load another run's model weights (``load_init_from``'s checkpoint; not its optimiser or counters) to
    start a new training stage."""
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"trainer.init_from={path} does not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); start from a checkpoint of the same encoder and decoder config"
        )
