"""The seed-ablation sweep files: every version composes onto the train config, every group names real versions."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from captioner.config import register

REPO = Path(__file__).resolve().parents[1]
VERSIONS = sorted(p.stem for p in (REPO / "sweeps" / "version").glob("*.yaml"))
GROUPS = sorted(p.stem for p in (REPO / "sweeps" / "sweep").glob("*.yaml"))

register()


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=["hydra.searchpath=[file://" + str(REPO / "sweeps") + "]", *overrides],
            return_hydra_config=hydra,
        )


def _grid_versions(group: str) -> list[str]:
    text = (REPO / "sweeps" / "sweep" / f"{group}.yaml").read_text()
    choice = re.search(r"version: choice\(([^)]*)\)", text)
    assert choice, f"{group} has no version grid"
    return [v.strip() for v in choice.group(1).split(",")]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_composes_with_its_seed_tags(version: str) -> None:
    cfg = _compose(f"version={version}")
    tags = cfg.logger.tags
    assert tags.seed_version == version
    assert tags.seed_flags and tags.seed_bleu4
    OmegaConf.to_container(cfg.tf, resolve=True)  # interpolations resolve


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_sweeps_existing_versions(group: str) -> None:
    versions = _grid_versions(group)
    assert versions and all(v in VERSIONS for v in versions)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(
    ("scale", "seeds", "expected"), [("smoke", None, 2), ("cpu", None, 3), ("coco", 5, 5)]
)
def test_every_group_grids_versions_times_seeds(
    group: str, scale: str, seeds: int | None, expected: int
) -> None:
    """The sweeper's grid is every version at trainer.seed 0..sweep.seeds-1, seed-major, all of it run."""
    from hydra_plugins.captioner_optuna_sweeper.search_space import Grid, parse_search_space

    extra = [f"sweep.seeds={seeds}"] if seeds else []
    cfg = _compose(f"sweep={group}", f"scale={scale}", *extra, hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.n_trials is None  # null: the whole grid, whatever the number of seeds
    params = {k: sweeper.params[k] for k in sweeper.params}  # resolves ${sweep.seeds}
    space, fixed = parse_search_space([f"{k}={v}" for k, v in params.items()])
    assert not fixed
    grid = Grid(space, seed=None)
    versions = _grid_versions(group)
    assert len(grid.points) == len(versions) * expected
    # Seed 0 of every version first (the golden run's first two trials are v39 and v40 at seed 0).
    assert grid.points[: len(versions)] == [{"trainer.seed": 0, "version": v} for v in versions]
    assert {p["trainer.seed"] for p in grid.points} == set(range(expected))


def _claim_versions(group: str) -> list[str]:
    """A sweep group's grid versions; a search check (`make search-check`, group search_<name>) compares
    the best trial of sweeps/search/<name>.yaml (best) with its base recipe (base)."""
    if group.startswith("search_"):
        assert (REPO / "sweeps" / "search" / f"{group.removeprefix('search_')}.yaml").is_file(), group
        return ["base", "best"]
    return _grid_versions(group)


def test_claims_name_versions_their_group_runs() -> None:
    from captioner.ablation import load_claims

    thresholds, baselines, claims = load_claims(
        OmegaConf.to_container(OmegaConf.load(REPO / "sweeps" / "claims.yaml"))
    )
    sweep_groups = {g for g in baselines if not g.startswith("search_")}
    assert sweep_groups == set(GROUPS), "every sweep group needs a baseline in sweeps/claims.yaml"
    assert thresholds == {"val.bleu4": 1.0, "test.object_f1": 0.5}
    for group, baseline in baselines.items():
        assert baseline in _claim_versions(group), f"{group}: baseline {baseline} is not in its grid"
    for c in claims:
        assert set(c.versions) <= set(_claim_versions(c.group)), f"{c.id}: {c.versions} not all in {c.group}"
    tested = {c.group for c in claims if not c.untested}
    assert tested == set(baselines), "every group has at least one testable claim"
    ids = {c.id for c in claims}
    # The three claims outside v15-v74 the issue names, and the one that cannot run offline.
    assert {"second_lstm_layer_no_help", "att_gamma_2_worse", "bucket_sampler_saves_time"} <= ids
    assert next(c for c in claims if c.id == "glove_vs_random_embeddings").untested


def test_extra_versions_change_one_thing_each() -> None:
    base = OmegaConf.to_container(_compose("version=x_base"), resolve=False)
    for version, key, value in [
        ("x_lstm2", ("decoder", "num_layers"), 2),
        ("x_att_gamma2", ("trainer", "att_gamma"), 2.0),
        ("x_no_bucket", ("data", "loader", "bucket"), False),
    ]:
        cfg = OmegaConf.to_container(_compose(f"version={version}"), resolve=False)
        node = cfg
        for k in key:
            node = node[k]
        assert node == value
        # Nothing else but the tags differs from x_base.
        cfg["logger"]["tags"] = base["logger"]["tags"]
        node = cfg
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = {"decoder": 1, "trainer": 1.0, "data": True}[key[0]]
        assert cfg == base, version


def test_seed_settings_reach_the_config() -> None:
    cfg = _compose("version=v43")
    assert cfg.tf.name == "inv_sigmoid" and cfg.tf.k == 1.2 and cfg.decoder.dropout == 0.5
    cfg = _compose("version=v23")
    assert cfg.encoder.encoder_dim == 256 and cfg.trainer.cache_features is True


@pytest.mark.parametrize("group", ["pretrain_finetune", "optical_finetune"])
def test_fine_tuning_versions_at_scale_cpu_train_on_the_cache_unless_they_augment(group: str) -> None:
    """scale=cpu fine-tunes from encoder.finetune_from, so every version but optical augmentation's
    (v61, v62: augmented images are encoded every step) trains on a cache of the frozen prefix."""
    from captioner.data.pipeline import uses_feature_cache

    for version in _grid_versions(group):
        cfg = _compose(f"sweep={group}", "scale=cpu", f"version={version}")
        parts = {k: OmegaConf.to_container(cfg[k]) for k in ("encoder", "trainer")}
        augmented = cfg.data.augment.optical_strength > 0
        assert uses_feature_cache(parts) == (not augmented), version
        assert cfg.encoder.finetune_from is not None


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


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_no_scale_overrides_what_a_version_sets(version: str) -> None:
    """Scales come after versions in the defaults list: a scale key that a version also sets would erase the ablation."""
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "sweeps" / "version" / f"{version}.yaml"))
    own = {k: v for k, v in _leaves(raw).items() if not k.startswith(("defaults", "logger."))}
    scales = sorted(p.stem for p in (REPO / "sweeps" / "scale").glob("*.yaml"))
    for scale in scales:
        cfg = _compose(f"version={version}", f"scale={scale}")
        got = {k: OmegaConf.select(cfg, k) for k in own}
        assert got == own, f"scale={scale} changes {version}'s own settings"
