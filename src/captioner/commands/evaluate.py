"""Score a checkpoint on prepared splits: ``captioner-evaluate checkpoint=runs/.../best.pt split=all decode=beam``
(= ``python evaluate.py``).

Prints a table, writes metrics.json and COCO-results captions_<split>.json, logs an MLflow run
tagged ``evaluation``. With ``calibrate=true`` it instead fits the decoding temperature on val and
stores it in the checkpoint (then decode with ``decode.calibrated=true``).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from captioner.cli import CONF_DIR, precheck, run_guarded
from captioner.config import TEST_METRICS, LoggerConfig, register

# Model, data and metrics modules load inside the functions. Registering the schemas (below) imports
# torch and torchvision all the same, so even a config error takes the seconds torch takes to load.
if TYPE_CHECKING:
    import torch

    from captioner.runtime.distributed import DistInfo


@dataclass
class EvaluateConfig:
    """Keys of conf/evaluate.yaml (typos fail at start)."""

    checkpoint: str = MISSING
    split: str = "test"
    data_root: str | None = None
    out: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    metrics: list[str] = field(default_factory=lambda: list(TEST_METRICS))
    calibrate: bool = False
    calibrate_max_tokens: int = 20000
    decode: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)


register()
ConfigStore.instance().store(name="base_evaluate", node=EvaluateConfig)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate (or calibrate) the checkpoint as ``cfg`` says; returns {split: metrics}."""
    from captioner.decode import DecodeConfig
    from captioner.runtime.device import resolve_device
    from captioner.runtime.distributed import cleanup, init_distributed, rank_device

    decode_cfg = OmegaConf.to_container(cfg.decode, resolve=True)
    DecodeConfig(**decode_cfg)  # a bad decode value fails before the model loads
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device.type)  # under torchrun each rank decodes a shard of each split
    try:
        return _evaluate(cfg, decode_cfg, rank_device(device, dist_info), dist_info)
    finally:
        cleanup(dist_info)


def _evaluate(cfg: DictConfig, decode_cfg: dict, device: "torch.device", dist_info: "DistInfo") -> dict:
    """Calibrate, or score the splits (rank 0 prints, writes and logs)."""
    from captioner.errors import require
    from captioner.evaluation.calibrate import calibrate_checkpoint
    from captioner.evaluation.checkpoint import (
        eval_batch_size,
        evaluate_checkpoint,
        resolve_data_root,
        resolve_splits,
    )
    from captioner.evaluation.report import metrics_table, write_results
    from captioner.model.load import load_captioner
    from captioner.tracking import build_tracker, spooled_run_id

    loaded = load_captioner(cfg.checkpoint, device)
    root = resolve_data_root(loaded, cfg.data_root, dist_info)
    batch_size = eval_batch_size(loaded, cfg.batch_size)
    if cfg.calibrate:
        require(not dist_info.enabled, "calibrate=true rewrites the checkpoint: run it without torchrun")
        t, before, after = calibrate_checkpoint(
            loaded, root, device, batch_size=batch_size, max_tokens=cfg.calibrate_max_tokens
        )
        print(f"val NLL {before:.4f} -> {after:.4f} at temperature {t:.4f}")
        print(f"temperature stored in {loaded.path}; decode with decode.calibrated=true to apply it")
        return {}
    splits = resolve_splits(root, cfg.split)
    out = Path(cfg.out) if cfg.out else loaded.path.parent / f"eval_{cfg.split}_{decode_cfg['method']}"
    results = evaluate_checkpoint(
        loaded, root, splits, decode_cfg, device, batch_size, list(cfg.metrics), dist_info
    )
    if not dist_info.is_main:  # rank 0 scores, prints, writes and logs
        return {}
    metrics = {split: r.metrics for split, r in results.items()}
    print(metrics_table(metrics))
    written = write_results(out, results)

    trained = loaded.run_id or spooled_run_id(loaded.path.parent)
    tracker = build_tracker(
        enabled=cfg.logger.enabled,
        tracking_uri=cfg.logger.tracking_uri,
        experiment=cfg.logger.experiment or loaded.config["logger"]["experiment"],
        run_name=cfg.logger.run_name or f"eval-{cfg.split}-{decode_cfg['method']}",
        params={
            "checkpoint": str(loaded.path),
            "data_root": str(root),
            "split": cfg.split,
            "decode": decode_cfg,
        },
        tags={
            "evaluation": "true",
            # nested under the training run in the MLflow UI (same experiment unless overridden)
            **({"trained_run_id": trained, "mlflow.parentRunId": trained} if trained else {}),
            **(cfg.logger.tags or {}),
        },
        run_dir=out,
    )
    tracker.log_metrics({f"{s}.{k}": v for s, m in metrics.items() for k, v in m.items()}, step=0)
    for path in written:
        tracker.log_artifact(path)
    tracker.finish()
    print(f"metrics and captions in {out}")
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def evaluate_main(cfg: DictConfig) -> None:
    """Hydra main: one-line errors for user mistakes."""
    run_guarded(lambda: evaluate(cfg))


def main() -> None:
    """Console entry: one-line errors for bad overrides, then Hydra."""
    precheck()
    evaluate_main()
