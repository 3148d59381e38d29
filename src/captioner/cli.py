"""Shared entry-point behaviour: one-line errors for users' mistakes, checked group choices."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a CaptionerError prints one line and exits with status 2 (in a sweep it propagates,
    so the sweeper records the trial as failed and goes on)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return fn()
    except CaptionerError as err:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"
        if multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def precheck(argv: Sequence[str] | None = None) -> None:
    """Exit with one line when an override names an unknown group choice."""
    message = check_group_choices(sys.argv[1:] if argv is None else argv)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
