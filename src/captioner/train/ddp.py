"""The model the optimiser steps through: the training fast path when ``trainer.compile`` picks it, then DDP
under torchrun (searching for unused parameters only when a config leaves some out of the forward pass)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from captioner.errors import ConfigError
from captioner.runtime.distributed import DistInfo


def check_distributed(cfg: DictConfig, distributed: bool) -> None:
    """Refuse, at start, a config that DDP would train wrongly without an error of its own.

    DDP registers the parameters that require gradients when it is built. With
    ``encoder.finetune_start_step > 0`` the backbone is frozen then and thawed later, so its gradients
    would never be averaged and the ranks' encoders would drift apart.
    """
    if distributed and cfg.encoder.finetune and cfg.encoder.finetune_start_step > 0:
        raise ConfigError(
            f"encoder.finetune_start_step={cfg.encoder.finetune_start_step} under torchrun: DDP would never "
            "average the backbone's gradients once it thaws; set encoder.finetune_start_step=0 or train on one process"
        )


def needs_unused_parameter_search(model: torch.nn.Module) -> bool:
    """Whether some trainable parameter of ``model`` (a Captioner) gets no gradient from a training step.

    DDP's ``find_unused_parameters=True`` walks the autograd graph after every forward to find such
    parameters (without it, DDP waits for their gradients forever); torchvision's reference leaves it
    off, so do we, except where a config really leaves parameters out:

    - ``decoder.context=mean|blind``: the controls keep the attention module but never call it.

    Everything else reaches the loss: on cached features the encoder's trainable tail (fine-tuned
    blocks, the ``encoder_dim`` 1x1 conv) runs on the cached maps, and its frozen prefix has
    ``requires_grad`` off, which DDP ignores; hard attention's sampled steps train the attention through
    the REINFORCE and entropy terms, blind's h0/c0 MLPs and L_z see zeros but stay in the graph.
    ``tests/test_ddp.py`` checks this answer against a real backward pass for each control.
    """
    return model.decoder.context != "soft"


def wrap_model(
    model: torch.nn.Module, device: torch.device, dist_info: DistInfo, compile: str
) -> torch.nn.Module:
    """``model`` wrapped for training steps: the fast path when ``use_fast_path(compile, device)``
    (``trainer.compile``), then DDP when distributed; every wrapper shares ``model``'s parameters."""
    from captioner.train.fast_path import make_fast, use_fast_path

    train_model = make_fast(model, device) if use_fast_path(compile, device, model.decoder) else model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=needs_unused_parameter_search(model),
        )
    return train_model
