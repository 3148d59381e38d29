"""Shared entry-point behaviour: where the configs are, one-line errors for users' mistakes, checked group choices."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError, SaveError

PACKAGE_DIR = Path(__file__).resolve().parent


def find_conf_dir() -> Path:
    """The Hydra config folder, the one place that decides it: an installed wheel's own copy
    (``captioner/conf``, where setup.py also puts the sweep groups), else the checkout's ``conf/``
    (editable install or ``PYTHONPATH=src``; sweeps/ comes in by ``hydra.searchpath``, from the repo root)."""
    packaged = PACKAGE_DIR / "conf"
    return packaged if (packaged / "config.yaml").is_file() else PACKAGE_DIR.parents[1] / "conf"


CONF_DIR = find_conf_dir()
if CONF_DIR.parent == PACKAGE_DIR:
    # Installed, the sweep groups are inside CONF_DIR; the checkout's cwd-relative `file://sweeps` search
    # path finds nothing in most folders, and Hydra would warn about that on every command.
    warnings.filterwarnings(
        "ignore", message="provider=hydra.searchpath in main, path=sweeps is not available"
    )


def check_conf_dir() -> None:
    """Exit with one line when there are no configs to compose (a package built without setup.py's hook)."""
    if not (CONF_DIR / "config.yaml").is_file():
        print(
            f"error: no Hydra configs in {PACKAGE_DIR / 'conf'} or {CONF_DIR}; "
            "reinstall captioner from its repository (pip install <repo>: setup.py packs conf/ into the wheel)",
            file=sys.stderr,
        )
        sys.exit(2)


def check_group_choices(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> str | None:
    """A one-line message for ``group=choice`` overrides naming a config that does not exist.

    Hydra reports these over several lines with a hint about HYDRA_FULL_ERROR; we say it in one,
    with the valid choices, before Hydra starts.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~").removeprefix("override ")
        group = conf_dir / key
        if "." in key or "/" in key or not group.is_dir() or "," in value or "(" in value:
            continue  # a value override, a nested group, or a sweep expression: Hydra checks those
        if value in ("null", "") or (group / f"{value}.yaml").exists():
            continue
        valid = sorted(p.stem for p in group.glob("*.yaml") if not p.stem.startswith("base_"))
        return f"{key}={value}: no such {key} config; valid choices: {', '.join(valid)}"
    return None


# Overrides that can change the encoder in ways this early look cannot follow: there ``check_offline_weights``
# stays silent and the full check runs after composition (captioner.train.validate).
_COMPOSED_ELSEWHERE = ("experiment", "sweep", "version", "scale", "trainer.resume", "trainer.init_from")


def encoder_needing_weights(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> str | None:
    """The encoder arch a plain ``train.py`` command loads ImageNet weights for, read from the overrides
    and the YAMLs without composing; None when it needs none or when that cannot be told this way."""
    import yaml

    if any(arg.startswith("-") for arg in argv):  # --multirun, --cfg, --help: Hydra's business
        return None
    overrides = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep:
            overrides[key.lstrip("+~")] = value
    if any(k == p or k.startswith(p + ".") for k in overrides for p in _COMPOSED_ELSEWHERE):
        return None
    choice = overrides.get("encoder")
    if choice is None:
        defaults = yaml.safe_load((conf_dir / "config.yaml").read_text())["defaults"]
        choice = next(d["encoder"] for d in defaults if isinstance(d, dict) and "encoder" in d)
    file = conf_dir / "encoder" / f"{choice}.yaml"
    group = (yaml.safe_load(file.read_text()) or {}) if file.exists() else {}
    pretrained = str(overrides.get("encoder.pretrained", group.get("pretrained", True))).lower()
    if pretrained in ("false", "0", "no", "off"):
        return None
    return overrides.get("encoder.arch", group.get("arch"))


def check_offline_weights(argv: Sequence[str] | None = None) -> None:
    """Exit with one line, before torch and torchvision are imported (~5 s on 2 cores), when the
    command's encoder needs an ImageNet weights file that is not cached and cannot be downloaded."""
    from captioner.runtime.hub_weights import unreachable_weights

    arch = encoder_needing_weights(sys.argv[1:] if argv is None else argv)
    message = unreachable_weights(arch) if arch else None
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a CaptionerError prints one line and exits with status 2, a SaveError (disk full, no
    permission) one line and status 1 (in a sweep both propagate, so the sweeper records the trial as
    failed and goes on)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return fn()
    except (CaptionerError, SaveError) as err:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
        if multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1 if isinstance(err, SaveError) else 2)


def check_value_overrides(argv: Sequence[str]) -> str | None:
    """A one-line message for ``key=value`` overrides the group's schema rejects (unknown key, bad type).

    Hydra reports these over several lines; we check each plain override against the registered
    ``base_<group>`` schema (call ``captioner.config.register()`` first) and name the key in one line.
    Anything we cannot check here (sweeps, appends, hydra keys, unparsable input) is left to Hydra.
    """
    from hydra.core.config_store import ConfigStore
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return None
    store = ConfigStore.instance()
    for override in overrides:
        group, _, rest = override.key_or_group.partition(".")
        if not rest or override.type != OverrideType.CHANGE or override.is_sweep_override():
            continue
        try:
            schema = OmegaConf.create(store.load(f"{group}/base_{group}.yaml").node)
        except Exception:  # noqa: BLE001 - no schema for this group (hydra.*, plain keys)
            continue
        try:
            OmegaConf.update(schema, rest, override.value(), merge=True)
        except OmegaConfBaseException as err:
            reason = str(err).strip().splitlines()[0]
            parent = override.key_or_group.rpartition(".")[0]
            node = OmegaConf.select(schema, parent.partition(".")[2]) if "." in parent else schema
            valid = ", ".join(f"{parent}.{k}" for k in node) if "not in" in reason and node else ""
            return f"{override.input_line}: {reason}" + (f"; valid keys: {valid}" if valid else "")
    return None


def precheck(argv: Sequence[str] | None = None) -> None:
    """Exit with one line when there are no configs, or an override names an unknown group choice, an
    unknown key or a bad value."""
    check_conf_dir()
    argv = sys.argv[1:] if argv is None else argv
    message = check_group_choices(argv) or check_value_overrides(argv)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
