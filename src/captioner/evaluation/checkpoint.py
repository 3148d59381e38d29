"""Score a saved checkpoint on prepared splits, through the same loaders, feature cache and
``evaluate_split`` as the training loop's final test evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from captioner.data.annotations import load_annotations
from captioner.data.loaders import build_eval_loader
from captioner.data.pipeline import cached_features, ensure_prepared, uses_feature_cache
from captioner.data.records import VOCAB
from captioner.data.vocab import Vocab
from captioner.errors import CheckpointError, ConfigError, require
from captioner.evaluation.core import TEST_METRICS, SplitResult, evaluate_split
from captioner.model.load import Loaded
from captioner.runtime.device import autocast_context, resolve_precision
from captioner.runtime.distributed import SINGLE, DistInfo


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


def resolve_data_root(
    loaded: Loaded, data_root: str | Path | None = None, dist_info: DistInfo = SINGLE
) -> Path:
    """The prepared folder to evaluate on: ``data_root`` or the checkpoint's ``data.root``.

    The generated shapes set is regenerated from the saved config when absent; real data must be
    prepared. The vocabulary must match the checkpoint's.
    """
    data_cfg = OmegaConf.create(loaded.config["data"])
    if data_root is not None:
        data_cfg.root = str(data_root)
    root = ensure_prepared(data_cfg, dist_info)
    check_vocab(loaded, root)
    return root


def resolve_splits(root: Path, split: str) -> list[str]:
    """``split`` as a list: one name, or ``all`` = every split but train (e.g. val, test, test_novel)."""
    present = load_annotations(root).splits
    if split == "all":
        return [s for s in present if s != "train"]
    require(
        split in present,
        f"split={split!r} is not in {root} (it has {', '.join(present)}); name one of them or split=all",
    )
    return [split]


def eval_precision(loaded: Loaded, device: torch.device) -> str:
    """The precision the run was trained (and test-scored) in; fp32 where this device cannot run it."""
    try:
        return resolve_precision(loaded.config["trainer"]["precision"], device)
    except ConfigError:  # an fp16 (CUDA-only) run scored on CPU: fp32 there, as training on CPU would
        return resolve_precision("auto", device)


def eval_batch_size(loaded: Loaded, batch_size: int | None = None) -> int:
    """``batch_size``, or (None) the batch size the run evaluated with: the same batches give the same bits."""
    loader_cfg = loaded.config["data"]["loader"]
    batch_size = batch_size or loader_cfg.get("eval_batch_size") or loader_cfg["batch_size"]
    require(batch_size >= 1, f"batch_size={batch_size} must be >= 1")
    return batch_size


def evaluate_checkpoint(
    loaded: Loaded,
    root: Path,
    splits: Sequence[str],
    decode_cfg: Mapping[str, Any],
    device: torch.device,
    batch_size: int | None = None,
    metrics: Sequence[str] = TEST_METRICS,
    dist_info: DistInfo = SINGLE,
) -> dict[str, SplitResult]:
    """Decode and score each split; returns ``{split: SplitResult}`` (text ``metrics`` + grounding metrics).

    As in training: a frozen encoder trained on the feature cache is scored on that cache (fp16
    features), a fine-tuned one encodes every image; the precision and the batch size (None = the
    run's eval batch size) are the run's, so the loop's test metrics and these agree. Under torchrun
    each rank decodes its shard of every split and rank 0 scores them (metrics on rank 0 only).
    """
    check_decode(loaded, decode_cfg)
    batch_size = eval_batch_size(loaded, batch_size)
    records = load_annotations(root)
    features = None
    if uses_feature_cache(loaded.config):
        features = cached_features(root, loaded.config, loaded.model.encoder, splits, device, dist_info)
    autocast = autocast_context(device, eval_precision(loaded, device))
    results = {}
    for split in splits:
        shard = (dist_info.world_size, dist_info.rank)
        loader = build_eval_loader(root, split, loaded.image_size, batch_size, features, distributed=shard)
        results[split] = evaluate_split(
            loaded.model,
            loader,
            loaded.vocab,
            records,
            dict(decode_cfg),
            device,
            dist_info,
            autocast,
            temperature=loaded.temperature,
            metrics=tuple(metrics),
            desc=f"decoding {split}",
        )
    return results
