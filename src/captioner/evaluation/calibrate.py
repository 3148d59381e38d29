"""Temperature calibration (Guo et al. 2017): fit T on teacher-forced val logits and store it in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from captioner.data.dataset import CaptionDataset, collate_captions
from captioner.data.transforms import build_eval_transform
from captioner.data.vocab import PAD_ID
from captioner.errors import DataError, require
from captioner.model.calibration import calibration_nll, fit_temperature
from captioner.model.load import Loaded
from captioner.runtime.checkpoint import load_checkpoint, save_checkpoint


@torch.inference_mode()
def teacher_forced_logits(
    loaded: Loaded,
    root: Path,
    split: str,
    device: torch.device,
    batch_size: int = 32,
    max_tokens: int = 20000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-word logits (N, V) and targets (N,) of ``split``'s reference captions, at most ``max_tokens`` rows."""
    require(max_tokens >= 1, f"calibrate_max_tokens={max_tokens} must be >= 1")
    max_len = int(loaded.config["data"]["loader"]["max_len"])
    dataset = CaptionDataset(root, split, loaded.vocab, max_len, build_eval_transform(loaded.image_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_captions)
    logits, targets, kept = [], [], 0
    for batch in loader:
        captions = batch["captions"].to(device)
        out = loaded.model(batch["images"].to(device), captions, teacher_forcing=1.0, features=False)
        target = captions[:, 1:]
        keep = target != PAD_ID  # only real words count; keeping only them bounds memory (N x V)
        logits.append(out.logits[keep].float().cpu())
        targets.append(target[keep].cpu())
        kept += int(keep.sum())
        if kept >= max_tokens:
            break
    require(kept > 0, f"split {split!r} of {root} has no captions to calibrate on", DataError)
    return torch.cat(logits)[:max_tokens], torch.cat(targets)[:max_tokens]


def calibrate_checkpoint(
    loaded: Loaded,
    root: Path,
    device: torch.device,
    split: str = "val",
    batch_size: int = 32,
    max_tokens: int = 20000,
) -> tuple[float, float, float]:
    """Fit T on ``split``'s teacher-forced logits and store it in the checkpoint; returns (T, NLL before, NLL after)."""

    logits, targets = teacher_forced_logits(loaded, root, split, device, batch_size, max_tokens)
    before = calibration_nll(logits, targets)
    temperature = fit_temperature(logits, targets, pad_id=PAD_ID)
    after = calibration_nll(logits, targets, temperature)
    state = load_checkpoint(loaded.path)
    state["temperature"] = temperature
    save_checkpoint(loaded.path, state)  # atomic: a crash never leaves half a checkpoint
    loaded.temperature = temperature
    return temperature, before, after
