"""A compact image store: one file of encoded image bytes plus a JSON index (fast to open and read).

One file instead of thousands of small ones loads faster, copies in one go and is easy to check.
The index maps ``image_id -> [offset, length, width, height]``; the bytes are JPEG or PNG.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captioner.data.records import IMAGES_BIN, IMAGES_INDEX, read_json, write_json_atomic
from captioner.errors import DataError


class ImageStoreWriter:
    """Append encoded images, then ``close()`` to publish ``images.bin`` + ``images.json`` atomically.

    Resumable: the bytes go to ``.images.bin.partial`` and :meth:`checkpoint` records in
    ``.images.partial.json`` how many of them are complete, the index so far, the caller's ``key``
    (what the store is made from) and its ``state``. A writer opened with the same ``key`` continues
    from the last checkpoint (``self.state`` is then the caller's state saved with it); one with
    another key starts over. An error inside ``with`` checkpoints what was written, so nothing is lost.
    """

    def __init__(self, root: str | Path, key: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / f".{IMAGES_BIN}.partial"
        self._journal = self.root / ".images.partial.json"
        self.key = key
        self.state: dict = {}
        self._index: dict[str, list[int]] = {}
        self._offset = 0
        journal = json.loads(self._journal.read_text()) if self._journal.exists() else None
        if journal is not None and key is not None and journal["key"] == key and self._tmp.exists():
            self._index, self._offset, self.state = journal["index"], journal["offset"], journal["state"]
            self._file = open(self._tmp, "r+b")  # noqa: SIM115 - closed in close()/__exit__
            self._file.truncate(self._offset)  # bytes after the last checkpoint belong to no index entry
            self._file.seek(self._offset)
        else:
            self._journal.unlink(missing_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/__exit__

    def add(self, image_id: str, data: bytes, width: int, height: int) -> None:
        """Append one encoded image (its bytes as they should be decoded later)."""
        if image_id in self._index:
            raise DataError(f"image id {image_id!r} added twice to the image store; ids must be unique")
        self._file.write(data)
        self._index[image_id] = [self._offset, len(data), int(width), int(height)]
        self._offset += len(data)

    def add_pil(self, image_id: str, image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> None:
        """Encode a PIL image (JPEG by default, PNG for lossless) and append it."""
        buf = io.BytesIO()
        image.save(buf, format=fmt, **({"quality": quality} if fmt.upper() == "JPEG" else {}))
        self.add(image_id, buf.getvalue(), image.width, image.height)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def checkpoint(self) -> None:
        """Make everything added so far (and ``self.state``) survive a crash; a no-op without a key."""
        if self.key is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())  # the bytes first, then the journal that vouches for them
        journal = {"key": self.key, "offset": self._offset, "index": self._index, "state": self.state}
        write_json_atomic(self._journal, journal)

    def close(self) -> None:
        """Flush the bytes, then write the index; the store exists only once both are complete."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.root / IMAGES_BIN)
        write_json_atomic(self.root / IMAGES_INDEX, self._index)
        self._journal.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written so far."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        self._journal.unlink(missing_ok=True)

    def __enter__(self) -> ImageStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.key is not None:  # resumable: keep what was written for the next run
            try:
                self.checkpoint()
            finally:
                self._file.close()
        else:
            self.abort()


# One parse per process (the loaders, the feature cache and figures each open the store): 123k entries
# take ~0.25 s to parse. Keyed like captioner.data.records' annotations cache: a rewrite is read again.
_INDEXES: dict[Path, tuple[tuple[int, int, int], dict[str, list[int]]]] = {}


def _read_index(path: Path) -> dict[str, list[int]]:
    st = path.stat()
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _INDEXES.get(path.resolve())
    if cached is None or cached[0] != stamp:
        cached = _INDEXES[path.resolve()] = (stamp, read_json(path, "image index"))
    return cached[1]


class ImageStore:
    """Read-only access to a store; safe to use from DataLoader workers (opens lazily per process)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / IMAGES_INDEX).exists() or not (self.root / IMAGES_BIN).exists():
            raise DataError(
                f"{self.root} has no image store ({IMAGES_BIN} + {IMAGES_INDEX}); "
                "prepare the data in image mode (data.prepare.images=true)"
            )
        self.index: dict[str, list[int]] = _read_index(self.root / IMAGES_INDEX)
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def read_bytes(self, image_id: str) -> bytes:
        """The encoded bytes of one image."""
        if image_id not in self.index:
            raise DataError(f"image {image_id!r} is not in the store {self.root}; re-run prepare")
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.root / IMAGES_BIN, "rb")  # noqa: SIM115 - one handle per process
            self._pid = os.getpid()
        offset, length = self.index[image_id][:2]
        self._file.seek(offset)
        return self._file.read(length)

    def pil(self, image_id: str) -> Image.Image:
        """Decode one image as RGB PIL."""
        return Image.open(io.BytesIO(self.read_bytes(image_id))).convert("RGB")

    def tensor(self, image_id: str) -> torch.Tensor:
        """Decode one image as a uint8 tensor (3, H, W)."""
        return torch.from_numpy(np.asarray(self.pil(image_id)).copy()).permute(2, 0, 1)

    def size(self, image_id: str) -> tuple[int, int]:
        """(width, height) without decoding."""
        w, h = self.index[image_id][2:4]
        return w, h
