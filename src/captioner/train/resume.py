"""Resuming a run (``trainer.resume=<run folder or checkpoint>``): the checkpoint's config wins over the
composed one, and the command line may change only what cannot alter the epochs already trained.

``python train.py trainer.resume=runs/2026-12-01/10-00-00`` composes the default config around the
override (default experiment, 10 epochs), so only keys the command line set (Hydra's task overrides, and
what the config groups they choose set) count as given; every other key is the saved run's.

The checkpoint's ``config`` is the authoritative record: it is written atomically with the weights,
optimiser state and counters it produced. The run folder's ``config.json`` is rewritten at every start
(also by a start that then failed), and ``.hydra/config.yaml`` is Hydra's unresolved composition of the
first start.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captioner.errors import ConfigError
from captioner.tracking import flatten
from captioner.train.saved_config import (
    UNSET,
    checkpoint_config,
    config_differences,
    describe,
    format_value,
)
from captioner.train.state import Progress, load_resume, resume_checkpoint

# What a resume may take from the command line, each with why it cannot change the epochs already trained
# (a key also covers the keys under it). Every other key must equal the saved value. Keys the config
# derives from one of these follow it: with more epochs, tf.epochs (${trainer.epochs}) and the LR
# schedule's length span the new length, so both are re-planned from the current epoch on.
RUNTIME_KEYS = {
    "trainer.epochs": "more epochs extend the run (fewer would cut it short: refused)",
    "trainer.device": "where the remaining epochs run",
    "trainer.threads": "CPU threads: speed, not numbers",
    "logger": "where the run is recorded",
}


@dataclass
class Resumed:
    """A run to continue: its checkpoint, its saved config with the allowed overrides, and its folder."""

    checkpoint: Path
    state: dict[str, Any]
    cfg: DictConfig
    overrides: list[str]  # one line per command-line override applied to the saved config

    @property
    def run_dir(self) -> Path:
        """The folder the run continues in: the checkpoint's."""
        return self.checkpoint.parent

    def finished_metrics(self) -> dict[str, Any] | None:
        """The run's ``metrics.json`` when training is over and the file was written after the checkpoint
        (its final evaluation ran); None when epochs or the final evaluation are left."""
        progress, t = Progress(**self.state["progress"]), self.cfg.trainer
        if progress.epoch < t.epochs and not progress.stopped_early(t.early_stop.patience):
            return None
        metrics = self.run_dir / "metrics.json"
        if not metrics.is_file() or metrics.stat().st_mtime < self.checkpoint.stat().st_mtime:
            return None
        return json.loads(metrics.read_text())

    def status_line(self, finished: bool) -> str:
        """What the resume does, for the console and the run's train.log."""
        progress, t = Progress(**self.state["progress"]), self.cfg.trainer
        if progress.stopped_early(t.early_stop.patience):
            done = f"stopped early after epoch {progress.epoch}/{t.epochs}"
        else:
            done = f"epoch {progress.epoch}/{t.epochs}"
        if finished:
            return (
                f"{self.run_dir} is already complete ({done}, metrics.json written); nothing to do "
                f"(to train longer, resume with trainer.epochs={t.epochs + 1} or more)"
            )
        if progress.epoch >= t.epochs or progress.stopped_early(t.early_stop.patience):
            return f"resuming {self.run_dir} ({done}): its final evaluation is left"
        return f"resuming {self.run_dir} from {self.checkpoint.name} ({done})"


def resume_run(cfg: DictConfig, given: Callable[[str], bool]) -> Resumed:
    """Load the checkpoint ``trainer.resume`` names and restore its config, with the runtime keys ``given``
    on the command line; any other given difference is refused in one line."""
    path, state = resume_checkpoint(cfg.trainer.resume), load_resume(cfg.trainer.resume)
    saved = checkpoint_config(state)
    raw = flatten(OmegaConf.to_container(cfg, resolve=False))
    # The command line's values resolved among the saved ones: tf.epochs (${trainer.epochs}) is the run's.
    wanted, foreign = _with_values(
        saved, {k: v for k, v in raw.items() if k != "trainer.resume" and given(k)}
    )
    changed = {**config_differences(saved, wanted, lambda key: True), **foreign}
    applied = {k: v for k, v in changed.items() if _may_change(k, *v)}
    # A key that followed an applied one in the saved run follows it still (tf.epochs, trainer.epochs).
    sources = _sources(raw)
    follows = {
        k: src for k, src in sources.items() if src in applied and _value(saved, k) == _value(saved, src)
    }
    wanted, _ = _with_values(wanted, {k: raw[k] for k in follows})
    derived = config_differences(saved, wanted, follows.__contains__)
    refused = {k: v for k, v in changed.items() if k not in applied and k not in derived}
    if refused:
        shown = {k: v for k, v in refused.items() if sources.get(k) not in refused}  # not what follows them
        allowed = ", ".join(f"{k}.*" if k == "logger" else k for k in RUNTIME_KEYS)
        raise ConfigError(
            f"trainer.resume={cfg.trainer.resume} continues a run trained with other settings "
            f"({describe(shown)}); a resume may change only {allowed} (epochs upwards): drop the others to "
            "continue the run, or start a new run without trainer.resume"
        )
    overrides = [
        f"resume: {key} {format_value(old)} -> {format_value(new)} "
        + (f"(follows {follows[key]})" if key in derived else "(from the command line)")
        for key, (old, new) in {**applied, **derived}.items()
    ]
    wanted.trainer.resume = cfg.trainer.resume
    return Resumed(path, state, wanted, overrides)


def _with_values(cfg: DictConfig, values: Mapping[str, Any]) -> tuple[DictConfig, dict[str, tuple[Any, Any]]]:
    """A copy of ``cfg`` with ``values`` set (interpolations resolve in it), and the keys its schema lacks
    (another group choice's keys) as differences from ``<unset>``."""
    out, foreign = copy.deepcopy(cfg), {}
    for key, value in values.items():
        try:
            OmegaConf.update(out, key, value, merge=False)
        except OmegaConfBaseException:
            foreign[key] = (UNSET, value)
    return out, foreign


def _sources(raw: Mapping[str, Any]) -> dict[str, str]:
    """``{key: source}`` for each key whose raw value is an interpolation of one other key (``${source}``)."""
    return {
        key: match.group(1)
        for key, value in raw.items()
        if isinstance(value, str) and (match := re.fullmatch(r"\$\{([\w.]+)\}", value))
    }


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=UNSET)


def _may_change(key: str, old: Any, new: Any) -> bool:
    if key == "trainer.epochs":
        return new >= old
    return any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)


def command_line_keys(cfg: DictConfig) -> Callable[[str], bool]:
    """Whether a dotted key of ``cfg`` was given on the command line: named by a task override (a key, or a
    config group's node), or set to another value than the default composition by one (e.g. by the keys
    ``experiment=...`` sets). Outside a Hydra app every key counts as given."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return lambda key: True
    hydra = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    named = tuple(o.key_or_group.replace("/", ".") for o in overrides)
    default = flatten(OmegaConf.to_container(compose(config_name=hydra.job.config_name), resolve=True))
    now = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = {key for key, value in now.items() if key not in default or default[key] != value}
    return lambda key: key in changed or any(key == n or key.startswith(n + ".") for n in named)
