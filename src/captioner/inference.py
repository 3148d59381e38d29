"""Use a trained checkpoint: load it into a ready model, score prepared splits, fit T, caption photos.

Everything a checkpoint needs travels inside it (weights, vocabulary, resolved config, fitted
temperature), so ``load_captioner`` rebuilds the model from the file alone; the encoder is built
with ``pretrained=false`` because its weights come from the checkpoint, not from torchvision.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from captioner.data.records import VOCAB, read_annotations, write_json_atomic
from captioner.data.vocab import PAD_ID, Vocab
from captioner.errors import CaptionerError, CheckpointError, DataError, require
from captioner.evaluation import TEST_METRICS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Columns of the evaluation table, in order; a metric a split did not compute is left out.
TABLE_COLUMNS = (
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "meteor",
    "rouge_l",
    "cider_d",
    "object_precision",
    "object_recall",
    "object_f1",
    "exact_scene",
    "pointing_accuracy",
    "attention_mass",
)


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
    from captioner.train.checkpoint import load_checkpoint
    from captioner.train.setup import build_model

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


def check_vocab(loaded: Loaded, data_root: str | Path) -> None:
    """CheckpointError unless the prepared data's vocab.json is the checkpoint's vocabulary."""
    path = Path(data_root) / VOCAB
    data_vocab = Vocab.load(path)
    if data_vocab != loaded.vocab:
        raise CheckpointError(
            f"checkpoint vocabulary ({len(loaded.vocab)} words) does not match {path} "
            f"({len(data_vocab)} words); evaluate with the data the model was trained on"
        )


def check_decode(loaded: Loaded, decode_cfg: Mapping[str, Any]) -> None:
    """ConfigError for decode options the checkpoint cannot honour (calibrated without a fitted T)."""
    from captioner.decode import DecodeConfig

    DecodeConfig(**decode_cfg)
    require(
        not decode_cfg.get("calibrated") or loaded.temperature is not None,
        f"decode.calibrated=true but {loaded.path} has no fitted temperature; run "
        f"`python evaluate.py checkpoint={loaded.path} calibrate=true` first or set decode.calibrated=false",
    )


def resolve_data_root(loaded: Loaded, data_root: str | Path | None = None) -> Path:
    """The prepared folder to evaluate on: ``data_root`` or the checkpoint's ``data.root``.

    The generated shapes set is regenerated from the saved config when absent; real data must be
    prepared. The vocabulary must match the checkpoint's.
    """
    from captioner.train.setup import ensure_prepared

    data_cfg = OmegaConf.create(loaded.config["data"])
    if data_root is not None:
        data_cfg.root = str(data_root)
    root = ensure_prepared(data_cfg)
    check_vocab(loaded, root)
    return root


def resolve_splits(root: Path, split: str) -> list[str]:
    """``split`` as a list: one name, or ``all`` = every split but train (e.g. val, test, test_novel)."""
    present = sorted({r.split for r in read_annotations(root)})
    if split == "all":
        return [s for s in present if s != "train"]
    require(
        split in present,
        f"split={split!r} is not in {root} (it has {', '.join(present)}); name one of them or split=all",
    )
    return [split]


def evaluate_checkpoint(
    loaded: Loaded,
    root: Path,
    splits: Sequence[str],
    decode_cfg: Mapping[str, Any],
    device: torch.device,
    batch_size: int = 32,
    metrics: Sequence[str] = TEST_METRICS,
) -> dict[str, Any]:
    """Decode and score each split; returns ``{split: SplitResult}`` (text ``metrics`` + grounding metrics)."""
    from captioner.data.dataset import ImageDataset, collate_images
    from captioner.data.transforms import build_eval_transform
    from captioner.evaluation import evaluate_split

    require(batch_size >= 1, f"batch_size={batch_size} must be >= 1")
    check_decode(loaded, decode_cfg)
    records = {r.id: r for r in read_annotations(root)}
    transform = build_eval_transform(loaded.image_size)
    results = {}
    for split in splits:
        # Encoded on the fly: a single pass, so a feature cache would not pay for itself.
        loader = torch.utils.data.DataLoader(
            ImageDataset(root, split, transform),
            batch_size=batch_size,
            shuffle=False,
            collate_fn=collate_images,
        )
        results[split] = evaluate_split(
            loaded.model,
            loader,
            loaded.vocab,
            records,
            dict(decode_cfg),
            device,
            temperature=loaded.temperature,
            metrics=tuple(metrics),
            desc=f"decoding {split}",
        )
    return results


def metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Rows = splits, columns = BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and grounding metrics (when present)."""
    columns = [c for c in TABLE_COLUMNS if any(c in m for m in metrics.values())]
    width = max([5, *(len(s) for s in metrics)])
    lines = [f"{'split':<{width}}  " + "  ".join(f"{c:>{max(len(c), 7)}}" for c in columns)]
    for split, m in metrics.items():
        cells = []
        for c in columns:
            v = m.get(c)
            # Text metrics are on a 0-100 scale, grounding metrics on 0-1.
            text = "-" if v is None else f"{v:.2f}" if c in TABLE_COLUMNS[:7] else f"{v:.3f}"
            cells.append(f"{text:>{max(len(c), 7)}}")
        lines.append(f"{split:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def write_results(out_dir: Path, results: Mapping[str, Any]) -> list[Path]:
    """``metrics.json`` ({split: metrics}) and COCO-results ``captions_<split>.json`` files; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {split: _json_safe(r.metrics) for split, r in results.items()}
    paths = [out_dir / "metrics.json"]
    write_json_atomic(paths[0], metrics, indent=2)
    for split, r in results.items():
        coco = [{"image_id": i, "caption": " ".join(r.captions[i])} for i in sorted(r.captions)]
        paths.append(out_dir / f"captions_{split}.json")
        write_json_atomic(paths[-1], coco, indent=1)
    return paths


def _json_safe(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: metrics undefined on a split (no objects mentioned) are written as null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


# --- temperature calibration ---------------------------------------------------------------------


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
    from captioner.data.dataset import CaptionDataset, collate_captions
    from captioner.data.transforms import build_eval_transform

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
    from captioner.model.calibration import calibration_nll, fit_temperature
    from captioner.train.checkpoint import load_checkpoint, save_checkpoint

    logits, targets = teacher_forced_logits(loaded, root, split, device, batch_size, max_tokens)
    before = calibration_nll(logits, targets)
    temperature = fit_temperature(logits, targets, pad_id=PAD_ID)
    after = calibration_nll(logits, targets, temperature)
    state = load_checkpoint(loaded.path)
    state["temperature"] = temperature
    save_checkpoint(loaded.path, state)  # atomic: a crash never leaves half a checkpoint
    loaded.temperature = temperature
    return temperature, before, after


# --- captioning files ------------------------------------------------------------------------------


@dataclass
class Captioned:
    """One captioned image: best caption first in ``n_best`` as (words, score)."""

    file: Path
    words: list[str]
    score: float
    n_best: list[tuple[list[str], float]]
    figure: Path | None = None
    panels: int = 0  # word panels drawn in the figure (one per word of the best caption)


def find_images(images: str | Path) -> list[Path]:
    """A file, or the image files (jpg/jpeg/png/bmp/webp) of a folder, sorted by name."""
    path = Path(images)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"images={str(path)!r} does not exist; give an image file or a folder of images")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataError(
            f"images={str(path)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); point at a folder of images"
        )
    return found


def read_image(path: Path) -> Image.Image:
    """Decode an image fully as RGB, rotated upright by its EXIF tag; DataError when unreadable."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError for truncated data.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = textwrap.shorten(reason, 120, placeholder=" ...")  # at a word boundary, not mid-word
        raise DataError(f"{path.name}: cannot read image ({reason}); skipped") from None


@torch.inference_mode()
def caption_image(
    loaded: Loaded, image: Image.Image, decode_cfg: Mapping[str, Any], device: torch.device
) -> tuple[list[tuple[list[str], float]], np.ndarray, tuple[int, int]]:
    """Caption one PIL image: n-best (words, score) and the best caption's alphas (T, L) with their grid."""
    from captioner.data.transforms import build_eval_transform
    from captioner.decode import decode

    x = build_eval_transform(loaded.image_size)(image).unsqueeze(0).to(device)
    annotations, grid = loaded.model.encode(x)
    hyp = decode(
        loaded.model.decoder, annotations.float(), **dict(decode_cfg), fitted_temperature=loaded.temperature
    )
    n_best = []
    for j in range(hyp.tokens.shape[1]):
        # Words up to <end>, <unk> kept, so word i is the token that alpha row i produced.
        n_best.append((loaded.vocab.decode(hyp.tokens[0, j].tolist()), float(hyp.scores[0, j])))
    best = n_best[0][0]
    alphas = hyp.alphas[0, 0, : len(best)].float().cpu().numpy()
    return n_best, alphas, grid


def caption_files(
    loaded: Loaded,
    files: Sequence[Path],
    decode_cfg: Mapping[str, Any],
    device: torch.device,
    out_dir: Path | None = None,
    figure_size: int = 320,
) -> tuple[list[Captioned], list[str]]:
    """Caption each file (and write its attention figure into ``out_dir``); returns (captioned, error lines)."""
    from captioner.viz import attention_figure

    check_decode(loaded, decode_cfg)
    done: list[Captioned] = []
    failed: list[str] = []
    for path in files:
        try:
            image = read_image(path)
        except DataError as err:
            failed.append(str(err))
            continue
        n_best, alphas, grid = caption_image(loaded, image, decode_cfg, device)
        words, score = n_best[0]
        result = Captioned(path, words, score, n_best)
        if out_dir is not None and words:
            shown = image.copy()
            shown.thumbnail((figure_size, figure_size))  # smaller figures; attention is upsampled to it
            result.figure = attention_figure(
                np.asarray(shown), words, alphas, grid, out_dir / f"{path.stem}.png", title=" ".join(words)
            )
            result.panels = len(words)
            _quantize_png(result.figure)
        done.append(result)
    return done, failed


def _quantize_png(path: Path) -> None:
    """Rewrite a figure as a 256-colour PNG: photo panels compress ~3x smaller, no visible change."""
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)


def write_captions(out_dir: Path, done: Sequence[Captioned], failed: Sequence[str]) -> Path:
    """``captions.json``: every captioned file with its n-best list, and the files that failed."""
    out = {
        "captions": [
            {
                "file": c.file.name,
                "caption": " ".join(c.words),
                "score": c.score,
                "n_best": [{"caption": " ".join(w), "score": s} for w, s in c.n_best],
                "figure": c.figure.name if c.figure else None,
            }
            for c in done
        ],
        "failed": list(failed),
    }
    path = out_dir / "captions.json"
    write_json_atomic(path, out, indent=2)
    return path
