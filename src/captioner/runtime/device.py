"""Where and in what precision to run: the device, the AMP precision and its autocast context."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from captioner.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto"
        )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA where the GPU supports it (no GradScaler, so no host sync per step),
    else fp16 + GradScaler; fp32 on CPU (this CPU has no native bf16: autocast is ~3x slower)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (GradScaler); on CPU use fp32 or bf16")
    return precision


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    """``torch.autocast`` for fp16/bf16 as the AMP docs prescribe; a no-op for fp32."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)
