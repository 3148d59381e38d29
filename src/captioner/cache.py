"""Entry point: ``python -m captioner.cache data=coco [train.py overrides]`` builds the feature cache ahead.

A frozen encoder's features (or, fine-tuning from ``encoder.finetune_from``, its frozen prefix's maps)
are otherwise computed inside the first training run, before its first step (~1.8 h for COCO on a
CPU). This takes the same overrides as ``train.py`` and runs the same code path up to the cache
(prepared data, model, ``build_data``), so the cache it writes is the one that training with those
overrides reads; it shows progress with an ETA and resumes if interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from captioner.cli import CONF_DIR
from captioner.config import register
from captioner.errors import CaptionerError, ConfigError


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """train.py's config for ``overrides``, with ``${hydra:...}`` keys (e.g. a sweep scale's MLflow
    experiment, ``sweep-${hydra:runtime.choices.sweep}-cpu``) resolvable as they are in train.py."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)  # while Hydra's view is set: nothing later in this process sees it
    finally:
        hydra_config.cfg = before
    return cfg


def build_cache(overrides: Sequence[str]) -> Path:
    """Compose the training config with ``overrides`` and fill its feature cache; returns the cache folder."""
    from captioner.data.features import FeatureReader
    from captioner.data.pipeline import build_data, ensure_prepared, uses_feature_cache
    from captioner.data.vocab import Vocab
    from captioner.model.build import build_model
    from captioner.runtime.device import resolve_device
    from captioner.runtime.distributed import SINGLE
    from captioner.train.loop import seed_everything

    cfg = compose_train_config(overrides)
    if not uses_feature_cache(OmegaConf.to_container(cfg)):
        raise ConfigError(
            "nothing to cache: training encodes every step with trainer.cache_features=false or "
            "encoder.finetune=true and encoder.finetune_from=null (the whole trunk trains); drop "
            "cache_features=false, or fine-tune from a block (encoder.finetune_from=features.11)"
        )
    seed_everything(cfg.trainer.seed)  # a randomly initialised encoder's features depend on the seed
    root = ensure_prepared(cfg.data)
    vocab = Vocab.load(root / "vocab.json")
    device = resolve_device(cfg.trainer.device)
    model = build_model(cfg.encoder, cfg.decoder, vocab).to(device)
    data = build_data(cfg, root, vocab, model, device, SINGLE)
    reader = data.train.dataset.source.features
    assert isinstance(reader, FeatureReader)  # cache_features and a frozen prefix: checked above
    print(f"feature cache ready: {reader.folder} ({len(reader)} images, {reader.shape} per image)")
    return reader.folder


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: a user's mistake prints one line and exits 2, not a traceback."""
    try:
        build_cache(sys.argv[1:] if argv is None else argv)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
