"""Caption image files: ``captioner-caption checkpoint=runs/.../best.pt images=photos/ decode.n_best=3``
(= ``python caption.py``).

Prints `file: caption` (and the n-best list with scores), writes captions.json and one attention
figure per image into ``out``. In a folder every file PIL can open is captioned; every other file is
skipped, with one ``skipped: <file> (<reason>)`` line each on stderr (and in captions.json); the exit
status is 0 when at least one image was captioned.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from captioner.cli import CONF_DIR, precheck, run_guarded
from captioner.config import register


@dataclass
class CaptionConfig:
    """Keys of conf/caption.yaml (typos fail at start)."""

    checkpoint: str = MISSING
    images: str = MISSING
    out: str = "captions_out"
    device: str = "cpu"
    figures: bool = True
    decode: Any = MISSING


register()
ConfigStore.instance().store(name="base_caption", node=CaptionConfig)


def caption(cfg: DictConfig) -> int:
    """Caption every image ``cfg.images`` names; returns the number captioned."""
    from captioner.captioning import caption_files, find_images, write_captions
    from captioner.decode import DecodeConfig
    from captioner.errors import DataError
    from captioner.model.load import load_captioner
    from captioner.runtime.device import resolve_device

    decode_cfg = OmegaConf.to_container(cfg.decode, resolve=True)
    DecodeConfig(**decode_cfg)
    files = find_images(cfg.images)
    device = resolve_device(cfg.device)
    loaded = load_captioner(cfg.checkpoint, device)
    out = Path(cfg.out)
    done, skipped = caption_files(loaded, files, decode_cfg, device, out if cfg.figures else None)
    for s in skipped:
        print(f"skipped: {s.file.name} ({s.reason})", file=sys.stderr)
    for c in done:
        print(f"{c.file.name}: {' '.join(c.words)}")
        if len(c.n_best) > 1:
            for rank, (words, score) in enumerate(c.n_best, 1):
                print(f"  {rank}. {score:8.3f}  {' '.join(words)}")
    out.mkdir(parents=True, exist_ok=True)
    path = write_captions(out, done, skipped)
    names = ", ".join(s.file.name for s in skipped)
    print(
        f"captioned {len(done)}, skipped {len(skipped)}" + (f": {names}" if skipped else "") + f"; see {path}"
    )
    if not done:
        raise DataError(f"no image of images={cfg.images!r} could be captioned; check the files above")
    return len(done)


@hydra.main(config_path=str(CONF_DIR), config_name="caption", version_base="1.3")
def caption_main(cfg: DictConfig) -> None:
    """Hydra main: one-line errors for user mistakes, status 2 when nothing was captioned."""
    run_guarded(lambda: caption(cfg))


def main() -> None:
    """Console entry: one-line errors for bad overrides, then Hydra."""
    precheck()
    caption_main()
