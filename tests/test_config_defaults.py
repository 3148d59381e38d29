"""Each default lives in one place: a group's YAML holds only what its choice changes, and every key has a reader.

The schemas of the constructor-backed groups are generated from the constructors' signatures
(``captioner.config.signature_schema``), so a key there is a keyword argument by construction; the
loop-level groups (trainer, logger, paths, data) are plain dataclasses whose fields must be read somewhere.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_train import fast_overrides, shapes_data  # noqa: F401 - shapes_data is a fixture

from captioner.config import group_schemas, signature_schema

ROOT = Path(__file__).resolve().parents[1]


def _repeats(values: dict, schema, prefix: str = "") -> list[str]:
    """Keys of ``values`` equal to the schema's default (nested dataclass fields too)."""
    out = []
    for key, value in values.items():
        if key == "defaults" or key not in schema:
            continue
        default = schema[key]
        if OmegaConf.is_config(default) and isinstance(value, dict):
            out += _repeats(value, default, f"{prefix}{key}.")
        elif not OmegaConf.is_missing(schema, key):
            default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
            if value == default:
                out.append(prefix + key)
    return out


@pytest.mark.parametrize("group", sorted(group_schemas()))
def test_no_group_yaml_repeats_a_default(group: str) -> None:
    schema = OmegaConf.structured(group_schemas()[group])
    repeats = {
        f.name: _repeats(OmegaConf.to_container(OmegaConf.load(f)), schema)
        for f in sorted((ROOT / "conf" / group).glob("*.yaml"))
    }
    assert not {k: v for k, v in repeats.items() if v}, f"conf/{group}: these keys repeat the default"


def test_signature_schema_takes_the_constructor_defaults() -> None:
    def build(name: str, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.99), tag: str | None = None):
        return name, lr, betas, tag

    schema = OmegaConf.structured(signature_schema(build, "BuildConfig", exclude=("tag",)))
    assert OmegaConf.is_missing(schema, "name") and schema.lr == 0.1 and list(schema.betas) == [0.9, 0.99]
    assert "tag" not in schema
    with pytest.raises(Exception, match="lr"):
        schema.lr = "fast"  # typed: a wrong type fails at composition


# Keys the reads check's run (one CPU epoch, shapes data, greedy decoding, no MLflow) cannot reach, each with
# the run that reads it. The check fails on a listed key that run does read: the list only shrinks.
READ_ELSEWHERE = {
    "paths.shared": "data=flickr8k's prepare paths (${paths.shared}/data/flickr8k)",
}
# Modules that read a config through ``OmegaConf.to_container``'s plain dicts; the loop's own call is the run's
# record (config.json, checkpoints, MLflow params) and reads nothing. A module missing here shows its keys
# as unread, never the other way round.
CONTAINER_READERS = ("captioner.data.pipeline", "captioner.model.build")


class ConfigReads:
    """The dotted keys a run reads: a DictConfig's attributes, items and ``get`` (``**cfg.group`` too), the
    plain dicts ``OmegaConf.to_container`` hands ``CONTAINER_READERS``, and the keys a read value
    interpolates (``data.root: ${paths.data_dir}/...``). Writing config.json, a checkpoint or MLflow's params
    serialises every key and reads none."""

    def __init__(self, raw: dict) -> None:
        self.raw = raw  # the unresolved config, flattened: what each key interpolates
        self.keys: set[str] = set()
        self.pause = False

    def _paused(self, fn):
        def call(*args, **kwargs):
            self.pause = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.pause = False

        return call

    def add(self, key: str) -> None:
        if self.pause or key in self.keys:
            return
        self.keys.add(key)
        for ref in re.findall(r"\$\{([A-Za-z_][\w.]*)\}", str(self.raw.get(key, ""))):
            self.add(ref)

    def record(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Record every read from now on, but those of ``validate_config`` (monkeypatch undoes it)."""
        from omegaconf import DictConfig

        from captioner.train.validate import validate_config

        for name in ("__getattr__", "__getitem__", "get"):
            monkeypatch.setattr(DictConfig, name, self._reader(getattr(DictConfig, name)))
        reads = self

        class RecordingDict(dict):
            def __init__(self, values: dict, prefix: str) -> None:
                super().__init__(
                    (k, RecordingDict(v, f"{prefix}{k}.") if isinstance(v, dict) else v)
                    for k, v in values.items()
                )
                self.prefix = prefix

            def __getitem__(self, key):
                reads.add(f"{self.prefix}{key}")
                return super().__getitem__(key)

            def get(self, key, default=None):
                return self[key] if key in self else default

            def __iter__(
                self,
            ):  # so ``**d`` takes the keys()/__getitem__ path (dict's fast path reads nothing)
                return super().__iter__()

        class RecordingOmegaConf:
            def __getattr__(self, name: str):
                return getattr(OmegaConf, name)

            def to_container(self, cfg, **kwargs):
                prefix = cfg._get_full_key("")
                return RecordingDict(OmegaConf.to_container(cfg, **kwargs), f"{prefix}." if prefix else "")

        for module in CONTAINER_READERS:
            monkeypatch.setattr(f"{module}.OmegaConf", RecordingOmegaConf())
        # a key that is only checked is still unused
        validate = "captioner.train.loop.validate_config"
        monkeypatch.setattr(validate, self._paused(validate_config))

    def _reader(self, original):
        def read(node, key, *args, **kwargs):
            value = original(node, key, *args, **kwargs)
            if isinstance(key, str) and not key.startswith("_"):
                self.add(node._get_full_key(key))
            return value

        return read


def _schema_keys(group: str) -> list[str]:
    """``group``'s dotted keys: its dataclass fields, and the fields of its nested sections."""
    keys = []
    for f in fields(group_schemas()[group]):
        default = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(default):  # trainer.early_stop, data.loader, data.augment
            keys += [f"{group}.{f.name}.{g.name}" for g in fields(default)]
        else:
            keys.append(f"{group}.{f.name}")
    return keys


# The runs whose reads count: one CPU epoch each on the shapes data, greedy decoding, no MLflow; the first
# trains on cached frozen-encoder features, the second on augmented images.
READING_RUNS = (["trainer.epochs=1"], ["trainer.epochs=1", "trainer.cache_features=false"])


@pytest.mark.slow  # two training epochs in process (~40 s on one core)
def test_every_dataclass_key_is_read_by_a_run(shapes_data, tmp_path, monkeypatch) -> None:  # noqa: F811
    """A key of the loop-level groups that no run reads is a dead flag: training runs record their reads."""
    from hydra import compose, initialize_config_dir

    from captioner.config import register
    from captioner.tracking import flatten
    from captioner.train import loop

    register()
    read: set[str] = set()
    for i, extra in enumerate(READING_RUNS):
        overrides = [*fast_overrides(shapes_data, tmp_path / f"run{i}"), *extra]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
            # Hydra makes the run folder from hydra.run.dir as config.yaml sets it (fast_overrides replaces it)
            hydra_cfg = compose(
                "config",
                [o for o in overrides if not o.startswith("hydra.run.dir=")],
                return_hydra_config=True,
            )
        reads = ConfigReads(flatten(OmegaConf.to_container(hydra_cfg, resolve=False)))
        reads.add("hydra.run.dir")
        with monkeypatch.context() as patch:
            patch.setattr("sys.argv", ["train.py", *overrides])
            reads.record(patch)
            loop.train(cfg, tmp_path / f"run{i}")
        read |= reads.keys

    keys = [k for g in ("trainer", "logger", "paths", "data", "decode", "smoothing") for k in _schema_keys(g)]
    read = {k for k in keys if k in read or any(r.startswith(f"{k}.") for r in read)}
    assert set(READ_ELSEWHERE) <= set(keys), "READ_ELSEWHERE names a key the schemas no longer have"
    assert not read & set(READ_ELSEWHERE), (
        f"read by these runs: drop {read & set(READ_ELSEWHERE)} from READ_ELSEWHERE"
    )
    unread = sorted(set(keys) - read - set(READ_ELSEWHERE))
    assert not unread, (
        f"keys no run reads (remove them, or name the run that reads them in READ_ELSEWHERE): {unread}"
    )


def test_paths_config_yaml_interpolations_point_at_real_keys() -> None:
    from captioner.config import PathsConfig

    keys = {f.name for f in fields(PathsConfig)}
    used = {m for p in ROOT.glob("conf/**/*.yaml") for m in re.findall(r"\$\{paths\.(\w+)\}", p.read_text())}
    assert used <= keys, used - keys
