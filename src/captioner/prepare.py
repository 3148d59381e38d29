"""Entry point: ``python -m captioner.prepare data=flickr8k`` prepares ``data.root`` from ``data.prepare``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from captioner.cli import CONF_DIR, check_conf_dir, run_guarded
from captioner.config import register
from captioner.data.prepare import prepare_dataset
from captioner.data.records import read_manifest
from captioner.errors import DataError

register()  # the structured schemas the YAML defaults lists name (base_paths, ...)


def summary(manifest: dict, out: Path) -> str:
    """A short table of what was prepared: per-split counts, vocabulary and what was left out."""
    lines = [f"prepared {out}", f"{'split':<10} {'images':>8} {'captions':>9}"]
    for split, count in manifest.get("splits", {}).items():  # the shapes set adds test_novel
        lines.append(f"{split:<10} {count['images']:>8} {count['captions']:>9}")
    if "vocab" in manifest:
        lines.append(
            f"vocab  {manifest['vocab']['size']} words (train split, min_count {manifest['vocab']['min_count']})"
        )
    for key in ("missing", "unsplit", "problems"):
        if manifest.get(key, {}).get("count"):
            lines.append(f"{key:<8} {manifest[key]['count']} (e.g. {manifest[key]['examples'][0]})")
    for reason, entry in manifest.get("skipped", {}).items():
        lines.append(f"skipped  {entry['count']} {reason} (e.g. {entry['examples'][0]})")
    return "\n".join(lines)


def check_inputs(cfg: DictConfig) -> None:
    """A one-line error naming the key to set when ``data.prepare`` points at annotations or splits that do
    not exist: relative paths (``paths.shared: ../shared``) start at the launch folder, wherever that is."""
    raw = OmegaConf.to_container(cfg.data.prepare, resolve=False)
    for key in (
        "annotations",
        "splits",
    ):  # image_root may be absent on purpose (images=false, on_missing=skip)
        value = cfg.data.prepare.get(key)
        if value is None or Path(value).exists():
            continue
        via = [p for p in ("paths.shared", "paths.data_dir") if f"${{{p}}}" in str(raw.get(key))]
        fix = f"set {via[0]} (now {OmegaConf.select(cfg, via[0])}) or " if via else "set "
        raise DataError(
            f"data.prepare.{key}={value} not found from the launch folder {Path.cwd()}; "
            f"{fix}data.prepare.{key} to an absolute path"
        )


def run(cfg: DictConfig) -> Path:
    """Prepare the configured dataset and print its summary."""
    check_inputs(cfg)
    kwargs = OmegaConf.to_container(cfg.data.prepare, resolve=True)
    out = prepare_dataset(out=cfg.data.root, **kwargs)
    print(summary(read_manifest(out), out))
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def prepare_main(cfg: DictConfig) -> None:
    """Hydra main: a user's mistake prints one line and exits 2, not a traceback."""
    run_guarded(lambda: run(cfg))


def main() -> None:
    """Console entry (``captioner-prepare``, ``python -m captioner.prepare``)."""
    check_conf_dir()
    prepare_main()


if __name__ == "__main__":
    main()
