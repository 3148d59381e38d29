"""The prepared-dataset format every loader reads, whatever the source format.

A prepared dataset is one folder::

    manifest.json      written LAST (atomically): its presence means the folder is complete
    annotations.json   {"images": [ImageRecord, ...]}; written and read once per process into
                       :class:`captioner.data.annotations.Annotations` by that module
    .annotations.index.npz  the same as arrays, written with it, so a start skips the JSON parse
    vocab.json         {"itos": [...]}  built from the train split only
    images.bin         image mode only: concatenated JPEG bytes (resized, shorter side 256 default)
    images.json        image mode only: {image_id: [offset, length, width, height]}
    features/<key>/    frozen-encoder feature caches (see captioner.data.features)

Every writer here goes to a temporary name and renames, so a half-written file never looks complete,
and gives the file the permissions ``open`` would (0666 less the umask), so a shared dataset folder
stays readable by the group.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import DataError
from captioner.runtime.files import open_atomic, write_atomic, write_json_atomic  # noqa: F401 - the data writers' API

SPLITS = ("train", "val", "test")
MANIFEST, ANNOTATIONS, VOCAB = "manifest.json", "annotations.json", "vocab.json"
ANNOTATIONS_INDEX = ".annotations.index.npz"  # the parsed annotations as arrays (data.annotations)
IMAGES_BIN, IMAGES_INDEX = "images.bin", "images.json"
FORMAT_VERSION = 1


@dataclass
class ImageRecord:
    """One image with all its reference captions.

    ``file`` is the image path relative to the source image root (or the store key); ``captions``
    are the raw strings and ``tokens`` their tokenised form (every reference kept, never capped);
    ``meta`` holds extra ground truth (the shapes benchmark's objects, boxes and word alignments).
    """

    id: str
    split: str
    file: str
    captions: list[str]
    tokens: list[list[str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: dict) -> ImageRecord:
        return cls(**obj)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, raising a one-line DataError that names the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise DataError(f"{what} {path} is not valid JSON ({err}); fix or re-create it") from err


def content_hash(records: list[ImageRecord]) -> str:
    """SHA-256 over ids, splits and tokens: equal hashes mean the same references and splits."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.id):
        h.update(json.dumps([r.id, r.split, r.tokens]).encode())
    return h.hexdigest()


def read_manifest(root: str | Path) -> dict:
    """Read the manifest; its absence means preparation never finished."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"prepared data folder not found: {root}; run `python -m captioner.prepare` first")
    if not (root / MANIFEST).exists():
        raise DataError(
            f"{root} has no {MANIFEST}: preparation did not finish; re-run `python -m captioner.prepare`"
        )
    return read_json(root / MANIFEST, "manifest")
