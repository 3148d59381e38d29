"""The training fast path (``trainer.compile``): whether a run takes it, and the model it trains through.

``auto`` takes it on CUDA, where the decoder's ~20 small steps per caption are launch-bound and host-bound,
and stays eager on CPU, so the CPU golden run is bitwise unchanged; ``on`` takes it on any device, ``off``
never. The path (``captioner.model.fast_train``): the teacher-forced pass with fused matrix products and a
compiled per-step cell (a CUDA graph on CUDA), the same loss and gradients as the eager pass up to
rounding (``tests/test_fast_path.py``); on CUDA a fine-tuned encoder also runs channels_last. SCST
(``objective=scst``) samples and decodes its baseline through the same compiled cell on this path
(``captioner.decode.fast_rollout``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captioner.errors import ConfigError
from captioner.model.decoder import DecoderOutput
from captioner.model.fast_train import check_fusable, compile_pass, fusion_gap, teacher_forced

COMPILE_SETTINGS = ("auto", "off", "on")


# YAML 1.1 reads an unquoted on/off as a boolean, and checkpoints written when the key was a bool hold
# true/false (a resume reads them as "True"/"False"): both mean what they meant then.
_BOOLEANS = {"True": "on", "False": "off", "true": "on", "false": "off"}


def compile_setting(value: object) -> str:
    """``trainer.compile`` as auto, off or on; a one-line ConfigError for anything else."""
    setting = _BOOLEANS.get(str(value), str(value))
    if setting not in COMPILE_SETTINGS:
        raise ConfigError(
            f"trainer.compile={value!r} is not valid; choose one of: {', '.join(COMPILE_SETTINGS)}"
        )
    return setting


def use_fast_path(setting: str, device: torch.device, decoder: nn.Module | None = None) -> bool:
    """Whether training on ``device`` takes the fast path for ``trainer.compile=setting`` (auto|off|on).

    ``auto`` leaves a ``decoder`` the path does not cover (hard attention, stacked LSTMs) on the eager
    path; ``on`` insists, and building the path then refuses it in one line."""
    setting = compile_setting(setting)
    if setting == "auto":
        return device.type == "cuda" and (decoder is None or fusion_gap(decoder) is None)
    return setting == "on"


class FastCaptioner(nn.Module):
    """A Captioner's training forward through the fused teacher-forced pass; its parameters are the
    Captioner's own (``self.model``), so the optimiser, checkpoints and DDP see the same tensors."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        check_fusable(model.decoder)
        self.model = model
        self.cell, self.prologue = compile_pass(device)
        self.cuda_graphs = device.type == "cuda"

    def forward(
        self, inputs: Tensor, captions: Tensor, teacher_forcing: float = 1.0, **encode: Any
    ) -> DecoderOutput:
        """``Captioner.forward``'s arguments (``encode``: its ``features``, ``image_index``) and result,
        through the fast teacher-forced pass."""
        if self.cuda_graphs:  # a new training step: the last step's CUDA-graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        annotations = self.model.caption_annotations(inputs, **encode)
        return teacher_forced(
            self.model.decoder, annotations, captions, teacher_forcing, self.cell, self.prologue
        )


def make_fast(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the loop trains ``model`` (a Captioner) through on the fast path: same call signature,
    same parameters. On CUDA a fine-tuned encoder is switched to channels_last (cuDNN's fast layout)."""
    encoder = getattr(model, "encoder", None)
    if device.type == "cuda" and encoder is not None and encoder.finetune:
        model.to(memory_format=torch.channels_last)  # in place: the Parameters stay the same objects
    return FastCaptioner(model, device)
