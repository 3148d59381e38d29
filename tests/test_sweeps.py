"""The seed-ablation sweep files: every version composes onto the train config, every group names real versions."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from captioner.config import register

REPO = Path(__file__).resolve().parents[1]
VERSIONS = sorted(p.stem for p in (REPO / "sweeps" / "version").glob("v*.yaml"))
GROUPS = sorted(p.stem for p in (REPO / "sweeps" / "sweep").glob("*.yaml"))

register()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "config", overrides=["hydra.searchpath=[file://" + str(REPO / "sweeps") + "]", *overrides]
        )


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_composes_with_its_seed_tags(version: str) -> None:
    cfg = _compose(f"version={version}")
    tags = cfg.logger.tags
    assert tags.seed_version == version
    assert tags.seed_flags and tags.seed_bleu4
    OmegaConf.to_container(cfg.tf, resolve=True)  # interpolations resolve


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_sweeps_existing_versions(group: str) -> None:
    text = (REPO / "sweeps" / "sweep" / f"{group}.yaml").read_text()
    choice = re.search(r"version: choice\(([^)]*)\)", text)
    assert choice, f"{group} has no version grid"
    versions = [v.strip() for v in choice.group(1).split(",")]
    assert versions and all(v in VERSIONS for v in versions)
    assert f"n_trials: {len(versions)}" in text


def test_seed_settings_reach_the_config() -> None:
    cfg = _compose("version=v43")
    assert cfg.tf.name == "inv_sigmoid" and cfg.tf.k == 1.2 and cfg.decoder.dropout == 0.5
    cfg = _compose("version=v23")
    assert cfg.encoder.encoder_dim == 256 and cfg.trainer.cache_features is False
