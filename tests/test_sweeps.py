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


@pytest.mark.parametrize("context", ["soft", "mean", "blind"])
def test_quality_experiment_composes_for_each_control(context: str) -> None:
    """`make bench-quality` trains experiment=quality three times, changing only decoder.context."""
    from captioner.data.vocab import Vocab
    from captioner.model.build import build_model

    cfg = _compose("experiment=quality", f"decoder.context={context}", "encoder.pretrained=false")
    assert cfg.encoder.layer == "features.13" and cfg.decoder.attend_word and cfg.decoder.coverage
    assert cfg.tf.name == "always"
    assert cfg.trainer.att_gamma == 0.0 and cfg.logger.experiment == "quality"
    model = build_model(
        cfg.encoder, cfg.decoder, Vocab(["<pad>", "<start>", "<end>", "<unk>", "red", "circle"])
    )
    assert model.decoder.context == context and model.encoder.out_dim == 96
