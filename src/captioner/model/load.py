"""Rebuild a trained captioner from its checkpoint file alone, ready to caption.

Everything a checkpoint needs travels inside it (weights, vocabulary, resolved config, fitted
temperature), so ``load_captioner`` rebuilds the model from the file alone; the encoder is built
with ``pretrained=false`` because its weights come from the checkpoint, not from torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captioner.data.vocab import Vocab
from captioner.errors import CaptionerError, CheckpointError
from captioner.model.build import build_model
from captioner.runtime.checkpoint import load_checkpoint


@dataclass
class Loaded:
    """A checkpoint made ready to caption: eval-mode model, its vocabulary and the config it was trained with."""

    model: torch.nn.Module
    vocab: Vocab
    config: dict[str, Any]
    temperature: float | None  # fitted on val by `evaluate.py calibrate=true`, else None
    image_size: int
    path: Path = field(default_factory=Path)
    run_id: str | None = None  # the training run's MLflow id, when it was logged


def load_captioner(checkpoint: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Load ``checkpoint`` (weights_only) and rebuild its model from the saved config, in eval mode."""
    path = Path(checkpoint)
    try:
        state = load_checkpoint(path, map_location=device)
    except CaptionerError:
        raise
    except Exception as err:  # noqa: BLE001 - the unpickler fails in many ways on a file of another kind
        raise CheckpointError(
            f"checkpoint {path} is not a captioner checkpoint (unreadable: {type(err).__name__}); "
            "pass a best.pt / last.pt written by train.py"
        ) from None
    missing = [k for k in ("model", "vocab", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; pass a checkpoint written by train.py")
    config = state["config"]
    vocab = Vocab(state["vocab"])
    # Weights (encoder included) come from the checkpoint: no torchvision download, no GloVe file.
    encoder_cfg = {**config["encoder"], "pretrained": False}
    decoder_cfg = {**config["decoder"], "pretrained_embeddings": None}
    model = build_model(encoder_cfg, decoder_cfg, vocab)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} weights do not fit the model its config describes ({first[:160]}); "
            "the file was edited or written by another version: retrain or use another checkpoint"
        ) from err
    model.to(device).eval()
    temperature = state.get("temperature")
    return Loaded(
        model=model,
        vocab=vocab,
        config=config,
        temperature=None if temperature is None else float(temperature),
        image_size=int(config["data"]["loader"]["image_size"]),
        path=path,
        run_id=(state.get("progress") or {}).get("run_id"),
    )
