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

from captioner.config import group_schemas, signature_schema

ROOT = Path(__file__).resolve().parents[1]
# Readers: the package, the entry points, and YAML interpolations (``${paths.data_dir}``).
SOURCES = [*ROOT.glob("src/captioner/**/*.py"), *ROOT.glob("*.py"), *ROOT.glob("conf/**/*.yaml")]


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


def _read_somewhere(name: str) -> bool:
    pattern = re.compile(rf"\.{name}\b|\[\"{name}\"\]|\b{name}=|\"{name}\"")
    return any(pattern.search(p.read_text()) for p in SOURCES)


@pytest.mark.parametrize("group", ["trainer", "logger", "paths", "data", "decode", "smoothing"])
def test_every_dataclass_key_has_a_reader(group: str) -> None:
    schema = group_schemas()[group]
    names = {f.name for f in fields(schema)}
    for f in fields(schema):  # nested sections (trainer.early_stop, data.loader/augment)
        default = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(default):
            names |= {g.name for g in fields(default)}
    unread = sorted(n for n in names if not _read_somewhere(n))
    assert not unread, f"{group}: keys nothing reads: {unread}"


def test_paths_config_yaml_interpolations_point_at_real_keys() -> None:
    from captioner.config import PathsConfig

    keys = {f.name for f in fields(PathsConfig)}
    used = {m for p in ROOT.glob("conf/**/*.yaml") for m in re.findall(r"\$\{paths\.(\w+)\}", p.read_text())}
    assert used <= keys, used - keys
