"""The annotations of a prepared folder: written, and read as one in-memory index parsed once per process.

:func:`write_annotations` writes ``annotations.json`` (format: :mod:`captioner.data.records`);
:func:`load_annotations` turns it into :class:`Annotations`, flat numpy arrays that forked DataLoader
workers share, and keeps the arrays in a sidecar (``.annotations.index.npz``, also written by
:func:`write_annotations`) so that later starts skip the JSON parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from captioner.data.records import (
    ANNOTATIONS,
    ANNOTATIONS_INDEX,
    ImageRecord,
    open_atomic,
    read_json,
    read_manifest,
)
from captioner.errors import DataError


class Annotations(Mapping[str, ImageRecord]):
    """Every record of a prepared dataset as flat numpy arrays; a read-only ``{image_id: ImageRecord}``.

    A list of 123k :class:`ImageRecord` objects costs ~2 GB, and every DataLoader worker that touches
    it copies the pages it touches (reference counts); these arrays cost ~100 MB and are never written,
    so forked workers share them. Rows keep the file's order; captions are rows of ``caption_starts``
    (per image: ``image_starts``), tokens are ids into ``words``.
    """

    def __init__(self, images: list[dict]):
        word_index: dict[str, int] = {}
        token_ids: list[int] = []
        token_counts: list[int] = []
        texts: list[str] = []
        self.metas: dict[int, dict] = {}
        for row, r in enumerate(images):
            for tokens in r["tokens"]:
                token_counts.append(len(tokens))
                token_ids.extend([word_index.setdefault(w, len(word_index)) for w in tokens])
            texts.extend(r["captions"])
            if r.get("meta"):
                self.metas[row] = r["meta"]
        self.ids = np.array([r["id"] for r in images], dtype=str)
        files = np.array([r["file"] for r in images], dtype=str)
        self.files = None if np.array_equal(files, self.ids) else files
        names = sorted({r["split"] for r in images})
        code = {name: k for k, name in enumerate(names)}
        self.split_names = tuple(names)
        self.split_codes = np.array([code[r["split"]] for r in images], dtype=np.uint8)
        self.words = list(word_index)
        self.token_ids = np.array(token_ids, dtype=np.int32)
        self.caption_starts = _starts(token_counts)
        self.image_starts = _starts([len(r["tokens"]) for r in images])
        encoded = [t.encode() for t in texts]
        self.text = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.text_starts = _starts([len(t) for t in encoded])
        self.text_image_starts = _starts([len(r["captions"]) for r in images])
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted_ids = self.ids[self._order]

    _ARRAYS = (
        "ids", "split_codes", "token_ids", "caption_starts", "image_starts", "text", "text_starts",
        "text_image_starts", "_order", "_sorted_ids",
    )  # fmt: skip

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as plain arrays (no pickles), for :func:`np.savez`; :meth:`from_arrays` inverts it."""
        arrays = {name.lstrip("_"): getattr(self, name) for name in self._ARRAYS}
        arrays["split_names"] = np.array(self.split_names, dtype=str)
        arrays["words"] = np.array(self.words, dtype=str)
        arrays["metas"] = np.array(json.dumps({str(k): v for k, v in self.metas.items()}))
        if self.files is not None:
            arrays["files"] = self.files
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Annotations:
        """The index :meth:`to_arrays` saved."""
        self = cls.__new__(cls)
        for name in cls._ARRAYS:
            setattr(self, name, arrays[name.lstrip("_")])
        self.split_names = tuple(str(s) for s in arrays["split_names"])
        self.words = arrays["words"].tolist()
        self.metas = {int(k): v for k, v in json.loads(str(arrays["metas"])).items()}
        self.files = arrays["files"] if "files" in arrays else None
        return self

    @property
    def splits(self) -> list[str]:
        """The splits present, sorted."""
        return list(self.split_names)

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of one split's images, in file order (empty if the split is absent)."""
        if split not in self.split_names:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.split_codes == self.split_names.index(split))

    def row(self, image_id: str) -> int:
        """The row of an image id; KeyError if absent."""
        k = int(np.searchsorted(self._sorted_ids, image_id))
        if k == len(self._sorted_ids) or self._sorted_ids[k] != image_id:
            raise KeyError(image_id)
        return int(self._order[k])

    def caption_tokens(self, caption: int) -> list[str]:
        """The tokens of caption number ``caption`` (a global caption index)."""
        a, b = self.caption_starts[caption], self.caption_starts[caption + 1]
        return [self.words[t] for t in self.token_ids[a:b].tolist()]

    def tokens(self, row: int) -> list[list[str]]:
        """Every tokenised reference of the image in ``row``."""
        return [self.caption_tokens(c) for c in range(self.image_starts[row], self.image_starts[row + 1])]

    def captions(self, row: int) -> list[str]:
        """Every raw reference caption of the image in ``row``."""
        a, b = self.text_image_starts[row], self.text_image_starts[row + 1]
        return [bytes(self.text[self.text_starts[c] : self.text_starts[c + 1]]).decode() for c in range(a, b)]

    def record(self, row: int) -> ImageRecord:
        """The full record of the image in ``row``."""
        image_id = str(self.ids[row])
        return ImageRecord(
            id=image_id,
            split=self.split_names[self.split_codes[row]],
            file=image_id if self.files is None else str(self.files[row]),
            captions=self.captions(row),
            tokens=self.tokens(row),
            meta=self.metas.get(row, {}),
        )

    def __getitem__(self, image_id: str) -> ImageRecord:
        return self.record(self.row(image_id))

    def __contains__(self, image_id: object) -> bool:
        try:
            self.row(image_id)  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return (str(i) for i in self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def values(self) -> Iterator[ImageRecord]:  # type: ignore[override]
        """Every record in file order."""
        return (self.record(row) for row in range(len(self)))


def _starts(counts: Sequence[int]) -> np.ndarray:
    """Offsets ``[0, c0, c0+c1, ...]`` (length n+1) of consecutive runs of the given lengths."""
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return starts


# One parse per process: training start, the loaders, the feature cache and evaluation all ask.
_LOADED: dict[Path, tuple[tuple[int, int, int], Annotations]] = {}


def _parse_annotations(path: Path) -> list[dict]:
    """The ``images`` list of an annotations file (the one place that parses it)."""
    return read_json(path, "annotations")["images"]


def _read_annotations(path: Path, stamp: tuple[int, int, int]) -> Annotations:
    """The index of ``path``: from its array sidecar when that matches the file, else parsed (and saved).

    At COCO size (123k images, 616k captions) parsing the JSON and building the arrays takes ~7 s of
    every start (training, evaluation, each sweep trial); the sidecar (``.annotations.index.npz``, plain
    arrays, no pickles) loads in a fraction of a second. It records the file's (inode, mtime, size): a
    rewritten or copied annotations file is parsed again. A read-only folder just parses every time.
    """
    sidecar = path.with_name(ANNOTATIONS_INDEX)
    try:
        with np.load(sidecar, allow_pickle=False) as arrays:
            if tuple(arrays["stamp"].tolist()) == stamp:
                return Annotations.from_arrays({k: arrays[k] for k in arrays.files})
    except (OSError, ValueError, KeyError):
        pass  # absent, stale or unreadable: parse the file
    annotations = Annotations(_parse_annotations(path))
    _save_index(path, stamp, annotations)
    return annotations


def _save_index(path: Path, stamp: tuple[int, int, int], annotations: Annotations) -> None:
    """Write the array sidecar of the annotations file ``path`` (skipped in a read-only folder)."""
    try:
        with open_atomic(path.with_name(ANNOTATIONS_INDEX)) as f:
            np.savez(f, stamp=np.array(stamp, dtype=np.int64), **annotations.to_arrays())
    except OSError:
        pass  # a read-only dataset folder: each start parses the JSON instead


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when the file is rewritten (an atomic rename changes the inode) or copied."""
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load_annotations(root: str | Path) -> Annotations:
    """The records of a complete prepared dataset (one whose manifest exists), parsed once per process."""
    root = Path(root).resolve()
    read_manifest(root)
    path = root / ANNOTATIONS
    try:
        stamp = _stamp(path)
    except OSError:
        raise DataError(f"annotations not found: {path}") from None
    cached = _LOADED.get(root)
    if cached is None or cached[0] != stamp:
        cached = _LOADED[root] = (stamp, _read_annotations(path, stamp))
    return cached[1]


def read_annotations(root: str | Path) -> list[ImageRecord]:
    """The records of a complete prepared dataset as a list of :class:`ImageRecord` (file order)."""
    return list(load_annotations(root).values())


def _record_json(r: ImageRecord) -> str:
    # Field by field rather than dataclasses.asdict, which deep-copies every caption and token list.
    obj = {
        "id": r.id,
        "split": r.split,
        "file": r.file,
        "captions": r.captions,
        "tokens": r.tokens,
        "meta": r.meta,
    }
    return json.dumps(obj)


def write_annotations(root: str | Path, records: Sequence[ImageRecord]) -> None:
    """Write ``annotations.json`` atomically, one record at a time (byte-identical to one json.dumps)."""
    with open_atomic(Path(root) / ANNOTATIONS) as f:
        f.write(b'{"images": [')
        for k, r in enumerate(records):
            f.write(((", " if k else "") + _record_json(r)).encode())
        f.write(b"]}")
    path = Path(root) / ANNOTATIONS
    _save_index(path, _stamp(path), Annotations([vars(r) for r in records]))  # later starts skip the parse
