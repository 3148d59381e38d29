"""Export the inference path as one ``torch.export`` program: images in, greedy caption ids and attention out.

`python -m captioner.export checkpoint=runs/.../best.pt out=model.pt2 [max_len=30]`

``torch.export`` (not TorchScript, deprecated since torch 2.9) records the real ``Encoder`` and
``Decoder.step`` ops as they run, so the exported graph is the Python model's, op for op. Export
fixes control flow: the greedy loop always runs ``max_len`` steps and rows that have emitted
``<end>`` keep emitting ``<pad>``, which gives exactly the tokens of :func:`captioner.decode.greedy`.
The image size is fixed to the checkpoint's; the batch size stays dynamic. The vocabulary and
image size travel inside the archive as extra files (``vocab.json``, ``meta.json``); loading needs
torch only, not captioner's model code.
"""

from __future__ import annotations

import io
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from captioner.data.vocab import END_ID, PAD_ID, START_ID, Vocab
from captioner.errors import CaptionerError, ConfigError, DataError, SaveError, require
from captioner.runtime.files import write_atomic


class GreedyCaptioner(nn.Module):
    """Images (B,3,S,S) in [0,1] -> tokens (B,max_len) long (``<pad>`` after ``<end>``) and alphas (B,max_len,L)."""

    def __init__(self, captioner: nn.Module, max_len: int = 30):
        super().__init__()
        require(max_len >= 1, f"export max_len={max_len} must be >= 1 (tokens including <end>)")
        self.encoder = captioner.encoder
        self.decoder = captioner.decoder
        self.max_len = max_len

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy decoding as in ``captioner.decode.greedy`` (same bans: never ``<pad>``/``<start>``)."""
        fmap = self.encoder(images)
        annotations = fmap.flatten(1, 2)  # (B, h*w, D), as Captioner.encode
        projected = self.decoder.project(annotations)
        state = self.decoder.init_state(annotations)
        words = torch.full_like(annotations[:, 0, 0], START_ID, dtype=torch.long)
        finished = torch.zeros_like(words, dtype=torch.bool)
        banned = torch.zeros(self.decoder.vocab_size, dtype=torch.bool, device=images.device)
        banned[PAD_ID] = True
        banned[START_ID] = True
        tokens, alphas = [], []
        for _ in range(self.max_len):
            logits, alpha, state = self.decoder.step(words, state, annotations, projected)
            words = logits.masked_fill(banned, -math.inf).argmax(-1).masked_fill(finished, PAD_ID)
            tokens.append(words)
            alphas.append(alpha.masked_fill(finished[:, None], 0.0))
            finished = finished | (words == END_ID)
        return torch.stack(tokens, 1), torch.stack(alphas, 1)


@dataclass
class Exported:
    """A loaded export: the TorchScript module, its vocabulary and input size."""

    module: nn.Module  # ExportedProgram.module()
    vocab: Vocab
    image_size: int
    max_len: int

    def caption(self, images: Tensor) -> list[list[str]]:
        """Greedy captions (words) of a batch of images (B,3,S,S) in [0,1]."""
        with torch.inference_mode():
            tokens, _ = self.module(images)
        return [self.vocab.decode(row) for row in tokens.tolist()]


def export_program(checkpoint: str | Path, out: str | Path, max_len: int = 30) -> Path:
    """Export the checkpoint's greedy captioner (CPU, dynamic batch) with torch.export and save it to ``out``."""
    from captioner.model.load import load_captioner

    loaded = load_captioner(checkpoint, "cpu")
    module = GreedyCaptioner(loaded.model, max_len).eval()
    example = torch.rand(2, 3, loaded.image_size, loaded.image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # no_grad: the frozen encoder's set_grad_enabled block otherwise exports as a node that fails to reload.
    with torch.no_grad(), warnings.catch_warnings():
        # nn.LSTM re-assigns its _flat_weights during export; harmless (the weights are parameters).
        warnings.filterwarnings("ignore", message=".*_flat_weights.*were assigned during export")
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    out = Path(out)
    meta = {"image_size": loaded.image_size, "max_len": max_len, "checkpoint": Path(checkpoint).name}
    extra = {"vocab.json": json.dumps(loaded.vocab.itos), "meta.json": json.dumps(meta)}
    # In memory first: on a full disk torch's zip writer aborts the process from its destructor (torch
    # 2.14) instead of raising; write_atomic then gives one line and never a half-written export.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    write_atomic(out, buffer.getvalue())
    return out


def load_exported(path: str | Path) -> Exported:
    """Load an archive written by :func:`export_program`."""
    path = Path(path)
    require(path.is_file(), f"exported model not found: {path}; run `python -m captioner.export`", DataError)
    extra = {"vocab.json": "", "meta.json": ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:  # noqa: BLE001 - any failure to read the archive means the same thing
        raise DataError(
            f"{path} is not a captioner export ({type(err).__name__}); re-export it with `python -m captioner.export`"
        ) from None
    require(
        bool(extra["meta.json"]),
        f"{path} has no captioner metadata; export it with captioner.export",
        DataError,
    )
    meta = json.loads(extra["meta.json"])
    return Exported(
        program.module(), Vocab(json.loads(extra["vocab.json"])), meta["image_size"], meta["max_len"]
    )


KEYS = ("checkpoint", "out", "max_len")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``checkpoint=... [out=best.pt2] [max_len=30]``; one-line errors: status 2, or 1 when ``out``
    cannot be written (a full disk)."""
    from omegaconf import OmegaConf

    try:
        args = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv))
        unknown = sorted(set(args) - set(KEYS))
        require(not unknown, f"captioner.export: unknown key(s) {unknown}; valid keys: {', '.join(KEYS)}")
        if "checkpoint" not in args:
            raise ConfigError("captioner.export needs checkpoint=<path to best.pt>")
        checkpoint = Path(str(args["checkpoint"]))
        out = Path(str(args.get("out") or checkpoint.with_name(f"{checkpoint.stem}.pt2")))
        max_len = args.get("max_len", 30)
        require(isinstance(max_len, int), f"max_len={max_len!r} must be an int")
        path = export_program(checkpoint, out, max_len)
    except (CaptionerError, SaveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, SaveError) else 2
    print(f"exported greedy captioner (max_len={max_len}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
