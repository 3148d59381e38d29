"""What a run carries across a restart: its counters, its checkpoint dict, checks that a checkpoint fits, seeds."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import Container, DictConfig, OmegaConf

from captioner.data.vocab import Vocab
from captioner.errors import CheckpointError, DamagedCheckpointError
from captioner.runtime import checkpoint as ckpt
from captioner.tracking import flatten


@dataclass
class Progress:
    """Loop counters saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0
    run_id: str | None = None

    def stopped_early(self, patience: int) -> bool:
        """``patience`` validations in a row brought no improvement (0: never stop early)."""
        return patience > 0 and self.bad_validations >= patience


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, world_size: int, step: int = 0) -> int:
    """The seed of DDP rank ``rank``'s own draws (dropout, scheduled sampling) from optimiser step ``step``.

    nanoGPT's ``seed_offset``: ``seed + rank`` at the start, so ranks do not repeat each other's
    dropout masks. A resumed run restores rank 0's saved RNG state; the other ranks' states are not
    saved, so they re-seed with ``world_size * step`` added (distinct per rank and per resume point,
    never replaying the first epoch's draws).
    """
    return seed + rank + world_size * step


def checkpoint_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    vocab: Vocab,
    resolved: dict,
) -> dict[str, Any]:
    """Everything needed to continue exactly, or to caption with no other file."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": ckpt.rng_state(),
        "progress": asdict(progress),
        "vocab": vocab.itos,
        "config": resolved,
    }


def checkpoint_config(state: Mapping[str, Any]) -> DictConfig:
    """A checkpoint's resolved config on this code's schemas: keys added to a schema since take their defaults."""
    from omegaconf.errors import OmegaConfBaseException

    from captioner.config import OBJECTIVE_SCHEMAS, Config, SweepConfig, group_schemas

    saved = state["config"]
    schemas = {**group_schemas(), "sweep": SweepConfig}
    objective = saved.get("objective", {}).get("name", "xe")
    if objective in OBJECTIVE_SCHEMAS:  # another name fails in validate_config, naming the choices
        schemas["objective"] = OBJECTIVE_SCHEMAS[objective]
    cfg = OmegaConf.structured(Config)
    try:
        for group in [*schemas, *(g for g in saved if g not in schemas)]:
            values = saved.get(group, {})
            schema = schemas.get(group)
            cfg[group] = OmegaConf.merge(OmegaConf.structured(schema), values) if schema else values
    except OmegaConfBaseException as err:  # a key this code no longer has: it cannot run that config
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"the checkpoint's config does not fit this code's config schema ({reason}); continue it with "
            "the captioner version that wrote it, or start a new run"
        ) from err
    return cfg


def resume_checkpoint(resume: str) -> Path:
    """The checkpoint ``trainer.resume`` names: a checkpoint file, or a run folder's ``last.pt``."""
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def load_resume(resume: str) -> dict[str, Any]:
    """Load the checkpoint ``trainer.resume`` names (:func:`resume_checkpoint`); when it is damaged, the
    error names the run's other checkpoint (last.pt <-> best.pt) if that one verifies."""
    path = resume_checkpoint(resume)
    try:
        return ckpt.load_checkpoint(path)
    except DamagedCheckpointError as err:
        other = path.with_name("best.pt" if path.name == "last.pt" else "last.pt")
        if not other.is_file() or not _intact(other):
            raise
        raise DamagedCheckpointError(
            path, err.problem, f"{other} is intact: resume from it with trainer.resume={other}"
        ) from err


def _intact(path: Path) -> bool:
    try:
        return ckpt.verify_checkpoint(path)
    except DamagedCheckpointError:
        return False


def config_differences(
    saved: DictConfig, cfg: DictConfig, keys: Callable[[str], bool]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, cfg's value)}`` for each dotted key of ``cfg`` that ``keys`` selects and ``saved``
    holds another value of (a key ``cfg`` lacks is left out: its value is not this run's to give)."""
    differences = {}
    for key in sorted(flatten(OmegaConf.to_container(cfg, resolve=False))):
        if keys(key):  # resolved one by one: only the selected keys' interpolations need to resolve
            before, now = _resolved(saved, key), _resolved(cfg, key)
            if before != now:
                differences[key] = (before, now)
    return differences


def _resolved(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=UNSET)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def describe(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """``tf.name: linear (saved) vs exp (given), ...``: config differences in one line."""
    return ", ".join(
        f"{k}: {format_value(old)} (saved) vs {format_value(new)} (given)"
        for k, (old, new) in differences.items()
    )


def check_checkpoint_fits(state: Mapping[str, Any], vocab: Vocab, cfg: DictConfig, source: str) -> None:
    """One-line error when the checkpoint ``source`` names was trained on another vocabulary or model config."""
    if state["vocab"] != vocab.itos:
        raise CheckpointError(
            f"{source}: its vocabulary differs from the data's vocab.json; use a checkpoint trained on the "
            "same data config"
        )
    model = config_differences(checkpoint_config(state), cfg, lambda key: key.split(".")[0] in MODEL_GROUPS)
    if model:
        raise CheckpointError(
            f"{source} was trained with another model config ({describe(model)}); use the same encoder "
            "and decoder settings (e.g. the experiment it was trained with)"
        )


MODEL_GROUPS = ("encoder", "decoder")  # the config groups a checkpoint's weights are shaped by
UNSET = object()  # the value of a key the saved config does not have


def format_value(value: Any) -> str:
    """A config value as an error message shows it (``null``, ``<unset>`` for a key the saved config lacks)."""
    return "<unset>" if value is UNSET else "null" if value is None else str(value)
