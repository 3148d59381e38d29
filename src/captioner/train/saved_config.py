"""A checkpoint's config: read on this code's schemas, and compared with a run's (resume, ``init_from``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import Container, DictConfig, OmegaConf

from captioner.data.vocab import Vocab
from captioner.errors import CheckpointError
from captioner.tracking import flatten

MODEL_GROUPS = ("encoder", "decoder")  # the config groups a checkpoint's weights are shaped by
UNSET = object()  # the value of a key the saved config does not have


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


def format_value(value: Any) -> str:
    """A config value as an error message shows it (``null``, ``<unset>`` for a key the saved config lacks)."""
    return "<unset>" if value is UNSET else "null" if value is None else str(value)
