"""Every config key a message names exists: each suggested ``key=value`` composes against conf/.

The suggestions are collected from the source, not listed by hand, so a new message with a wrong key
(``prepare.on_missing=skip`` for ``data.prepare.on_missing=skip``) fails here the day it is written.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captioner.config import register

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SOURCES = [
    *sorted((REPO / "src" / "captioner").rglob("*.py")),
    *(REPO / n for n in ("train.py", "evaluate.py", "caption.py")),
]
HOLE = "\x00"  # where an f-string puts a value: ``data.prepare.on_bad={on_bad!r}`` names the key only
# a dotted key, ``=``, and a literal value (a [list] whole), a hole, or nothing
SUGGESTION = re.compile(r"(?<![\w./-])([a-z_]+(?:\.[a-z_][a-z_0-9]*)+)=(\[[^\]]*\]|[^\s;,'\"()\x00]*|\x00)")
ENTRY_CONFIGS = ("config", "evaluate", "caption", "prepare")


def _strings(source: Path) -> list[str]:
    """The string literals of ``source`` (f-strings with their values as holes), docstrings left out."""
    tree = ast.parse(source.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)  # parts of an f-string: read whole below
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))  # docstrings show bad values on purpose (``trainer.epochs=ten``)
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            texts.append("".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            texts.append(node.value)
    return texts


def suggestions() -> dict[str, str]:
    """``{"key=value" or "key": where}`` for every dotted key that a message of the package names."""
    found: dict[str, str] = {}
    for source in SOURCES:
        for text in _strings(source):
            for key, value in SUGGESTION.findall(text):
                named = key if value in ("", HOLE) else f"{key}={value}"
                found.setdefault(named, str(source.relative_to(REPO)))
    return found


@cache
def _composed(config: str, overrides: tuple[str, ...]) -> object | None:
    """The config ``config`` composed with ``overrides``, or None when Hydra refuses them."""
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException):
        return None


def _contexts(key: str) -> list[tuple[str, tuple[str, ...]]]:
    """Where a key may live: each entry point's defaults, then each choice of the key's config group
    (``data.prepare.on_missing`` exists under data=jsonl, not under the default generated shapes)."""
    contexts = [(config, ()) for config in ENTRY_CONFIGS]
    group = CONF / key.split(".")[0]
    if group.is_dir():
        contexts += [("config", (f"{group.name}={p.stem}",)) for p in sorted(group.glob("*.yaml"))]
    return contexts


def _has_key(cfg: DictConfig, key: str) -> bool:
    """``key`` is in ``cfg``, or under a free-form dict a user adds keys to with ``+`` (data.prepare)."""
    if OmegaConf.select(cfg, key, default=HOLE, throw_on_missing=False) != HOLE:
        return True
    parent = OmegaConf.select(cfg, key.rpartition(".")[0], default=None)
    return isinstance(parent, DictConfig) and OmegaConf.get_type(parent) is dict


def _home(key: str) -> tuple[str, tuple[str, ...]] | None:
    """The first context whose composed config has ``key``."""
    for config, overrides in _contexts(key):
        cfg = _composed(config, overrides)
        if cfg is not None and _has_key(cfg, key):
            return config, overrides
    return None


def _composes(named: str) -> bool:
    """``key=value`` composes in some context (a placeholder such as ``<checkpoint>`` stands for a value)."""
    key, _, value = named.partition("=")
    value = re.sub(r"^<.*>$", "x", value)
    return any(_composed(c, (*o, f"{key}={value}")) is not None for c, o in _contexts(key))


def wrong_names(found: dict[str, str]) -> list[str]:
    """The names in ``found`` no config has: a key in no context, or a ``key=value`` that does not compose.

    Suggestions are composed together per context (one compose each: they take ~0.3 s), and one by
    one only when that fails.
    """
    wrong, batches = [], {}
    for named in found:
        key, _, value = named.partition("=")
        home = _home(key)
        if home is None:
            wrong.append(named)
        elif value:
            batches.setdefault(home, []).append(named)
    for (config, overrides), names in batches.items():
        batch = tuple(re.sub(r"=<.*>$", "=x", n) for n in names)
        if _composed(config, (*overrides, *batch)) is None:
            wrong += [n for n in names if not _composes(n)]
    return sorted(f"{n} ({found[n]})" for n in wrong)


def test_the_scan_finds_the_messages_suggestions() -> None:
    found = suggestions()
    # one of each kind: a suggested override, a named key whose bad value an f-string fills in
    assert "data.prepare.on_missing=skip" in found and "data.prepare.on_bad=skip" in found
    assert "data.prepare.max_pixels" in found and "trainer.init_from=<checkpoint>" in found
    assert len(found) > 50


def test_every_key_a_message_names_composes() -> None:
    register()
    wrong = wrong_names(suggestions())
    assert not wrong, "messages name keys the configs do not have: " + "; ".join(wrong)


@pytest.mark.parametrize("named", ["prepare.on_missing=skip", "augment.hflip", "decoder.encoder_dim"])
def test_a_key_that_does_not_exist_is_caught(named: str) -> None:
    register()
    assert wrong_names({named: "here"}) == [f"{named} (here)"]
