"""Turn a caption source (any of ``formats``) into a prepared dataset folder (see ``records``).

Order matters for safety: the old manifest is removed first, images are resized into the store,
annotations and vocabulary are written, and the manifest goes last, so an interrupted run never
leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import posixpath
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from captioner.data.annotations import write_annotations
from captioner.data.formats import PARSERS, RawCaption, parse
from captioner.data.records import (
    FORMAT_VERSION,
    IMAGES_BIN,
    IMAGES_INDEX,
    MANIFEST,
    SPLITS,
    ImageRecord,
    content_hash,
    write_json_atomic,
)
from captioner.data.store import ImageStoreWriter
from captioner.data.vocab import SPECIALS, Vocab, tokenize
from captioner.errors import ConfigError, DataError, require
from captioner.progress import log_line, progress

ON_MISSING = ("error", "skip")
ON_BAD = ("error", "skip")
EXAMPLES = 5  # how many examples of each problem the manifest and messages show
PIL_DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb warning threshold
CHECKPOINT_EVERY_S = 10.0  # how much image work an interruption can cost


class _Skips:
    """Counts and first examples of everything dropped under ``on_bad=skip``, by reason."""

    def __init__(self, on_bad: str):
        self.on_bad = on_bad
        self.by_reason: dict[str, dict[str, Any]] = {}

    def bad(self, reason: str, example: str, message: str) -> None:
        """Raise ``message`` (on_bad=error) or count the skip under ``reason``."""
        if self.on_bad == "error":
            raise DataError(message)
        entry = self.by_reason.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append(example)


def _summary(items: list[str]) -> dict[str, Any]:
    return {"count": len(items), "examples": items[:EXAMPLES]}


def _safe_relpath(file: str) -> str | None:
    """``file`` as a normalised relative posix path, or None if it could leave the image root.

    Lexical on purpose: symlinked image folders are common and legitimate, a ``..`` in a caption
    file is not.
    """
    path = posixpath.normpath(file.replace("\\", "/"))
    if not file.strip() or posixpath.isabs(path) or path == ".." or path.startswith("../") or ":" in path[:2]:
        return None
    return path


def _group(captions: list[RawCaption], skips: _Skips) -> tuple[list[ImageRecord], list[str]]:
    """Captions -> one record per image (every reference kept); images in no split are returned apart."""
    by_file: dict[str, ImageRecord] = {}
    unsplit: dict[str, None] = {}
    seen: set[str] = set()
    for raw in captions:
        file = _safe_relpath(raw.file)
        if file is None:
            skips.bad(
                "unsafe_path",
                raw.file,
                f"{raw.where}: image path {raw.file!r} escapes the image root; use a path inside "
                "data.prepare.image_root or set data.prepare.on_bad=skip to drop it",
            )
            continue
        if raw.split is None:
            unsplit[file] = None
            continue
        if raw.caption is None:
            skips.bad(
                "no_captions",
                raw.where,
                f"{raw.where}: image {raw.file} has no captions (an empty list); add its captions or set "
                "data.prepare.on_bad=skip to drop it",
            )
            continue
        seen.add(file)
        tokens = tokenize(raw.caption)
        if not tokens:
            skips.bad(
                "empty_caption",
                raw.where,
                f"{raw.where}: empty caption {raw.caption!r} for {raw.file}; write the caption or set "
                "data.prepare.on_bad=skip to drop it",
            )
            continue
        record = by_file.setdefault(
            file, ImageRecord(id=file, split=raw.split, file=file, captions=[], tokens=[])
        )
        if record.split != raw.split:
            raise DataError(
                f"{raw.where}: image {file} is in split {raw.split!r} here but {record.split!r} earlier; "
                "an image may be in one split only, fix the split source"
            )
        record.captions.append(raw.caption)
        record.tokens.append(tokens)
    # An image whose captions were all skipped was itself dropped: say so, not just its captions.
    for file in sorted(seen - set(by_file)):
        skips.bad("no_valid_caption", file, f"image {file} has no usable caption; fix its captions")
    return sorted(by_file.values(), key=lambda r: r.id), sorted(unsplit)


def _find_missing(format: str, annotations: str | Path) -> str:
    """How to get missing images: a public dataset's come from its download, a user's own are theirs to find."""
    if format == "jsonl":
        return f"check that data.prepare.image_root is the folder the image paths of {annotations} are relative to"
    return "download them (python -m captioner.data.download --help)"


def _resize_one(task: tuple[str, str, int, int]) -> tuple[str, bytes | None, int, int, str | None, str]:
    """Decode one image and resize it (shorter side = ``side``, aspect kept) to JPEG bytes.

    Returns ``(id, bytes, width, height, None, "")`` or ``(id, None, 0, 0, reason, detail)``; runs in
    worker processes, so failures come back as values rather than exceptions.
    """
    image_id, path, side, max_pixels = task
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our max_pixels check below replaces PIL's decompression-bomb guard
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                return image_id, None, 0, 0, "too_large", f"{width}x{height} = {width * height} pixels"
            scale = side / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image.draft("RGB", size)  # JPEG: decode at a reduced scale, far faster for large photos
            resized = image.convert("RGB").resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return image_id, None, 0, 0, "corrupt", f"{type(err).__name__}: {err}"
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=90)
    return image_id, buf.getvalue(), size[0], size[1], None, ""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_images(
    out: Path,
    image_root: Path,
    records: list[ImageRecord],
    image_side: int,
    max_pixels: int,
    workers: int,
    skips: _Skips,
) -> list[ImageRecord]:
    """Resize every record's image into the store (in parallel); returns the records that made it.

    Resumable: an interrupted run (an error, Ctrl-C, a kill) leaves the images done so far, and a
    rerun with the same images and settings continues after them, in the same order, so the store is
    byte-identical to one written in one go.
    """
    tasks = [(r.id, str(image_root / r.file), image_side, max_pixels) for r in records]
    ids = hashlib.sha256(json.dumps([t[0] for t in tasks]).encode()).hexdigest()
    key = {"image_root": str(image_root), "image_side": image_side, "max_pixels": max_pixels, "ids": ids}
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        with ImageStoreWriter(out, key=key) as writer:
            # state: tasks finished (kept or skipped) and the skipped ones, replayed into the counts.
            state = writer.state = writer.state or {"tasks": 0, "bad": []}
            start = state["tasks"]
            if start:
                log_line(f"resuming the image store after {start} of {len(tasks)} images")
            for image_id, reason, detail in state["bad"]:
                _report_bad(skips, image_root, image_id, reason, detail, max_pixels)
            todo = tasks[start:]
            results = pool.map(_resize_one, todo, chunksize=16) if pool else map(_resize_one, todo)
            last = time.monotonic()
            for image_id, data, width, height, reason, detail in progress(
                results, total=len(tasks), initial=start, desc="resize images", unit="img"
            ):
                if reason is not None:
                    _report_bad(skips, image_root, image_id, reason, detail, max_pixels)
                    state["bad"].append([image_id, reason, detail])
                else:
                    writer.add(image_id, data, width, height)
                state["tasks"] += 1
                if time.monotonic() - last > CHECKPOINT_EVERY_S:
                    writer.checkpoint()
                    last = time.monotonic()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)  # on an error, do not wait for the rest of the images
    return [r for r in records if r.id in writer]


def _report_bad(
    skips: _Skips, image_root: Path, image_id: str, reason: str, detail: str, max_pixels: int
) -> None:
    path = image_root / image_id
    if reason == "too_large":
        skips.bad(
            "too_large",
            image_id,
            f"image {path} is {detail}, over data.prepare.max_pixels={max_pixels}; raise "
            "data.prepare.max_pixels if you trust it or set data.prepare.on_bad=skip to drop it",
        )
    else:
        skips.bad(
            "corrupt_image",
            image_id,
            f"cannot decode image {path} ({detail}); replace the file or set data.prepare.on_bad=skip to drop it",
        )


def prepare_captions(
    out: str | Path,
    format: str,
    annotations: str | Path,
    splits: str | Path | None = None,
    image_root: str | Path | None = None,
    images: bool = True,
    image_side: int = 256,
    on_missing: str = "error",
    on_bad: str = "error",
    max_pixels: int = PIL_DEFAULT_MAX_PIXELS,
    vocab_max_size: int | None = 10000,
    vocab_min_count: int = 5,
    workers: int | None = None,
) -> Path:
    """Prepare a real caption source into ``out``: annotations, train-only vocabulary, images, manifest.

    ``workers`` resize processes (None: every core this process may use); an interrupted image run
    resumes where it stopped when rerun with the same arguments.
    """
    require(
        format in PARSERS,
        f"data.prepare.format={format!r} is not a caption format; use one of {sorted(PARSERS)} or shapes",
    )
    require(on_missing in ON_MISSING, f"data.prepare.on_missing={on_missing!r}; use one of {ON_MISSING}")
    require(on_bad in ON_BAD, f"data.prepare.on_bad={on_bad!r}; use one of {ON_BAD}")
    require(
        isinstance(image_side, int) and image_side >= 8,
        f"data.prepare.image_side={image_side!r} must be an int >= 8",
    )
    require(
        isinstance(max_pixels, int) and max_pixels > 0,
        f"data.prepare.max_pixels={max_pixels!r} must be a positive int",
    )
    require(
        workers is None or (isinstance(workers, int) and workers >= 1),
        f"data.prepare.workers={workers!r} must be null (every available core) or an int >= 1",
    )
    workers = available_cores() if workers is None else workers
    require(
        isinstance(vocab_min_count, int) and vocab_min_count >= 1,
        f"data.prepare.vocab_min_count={vocab_min_count!r} must be an int >= 1",
    )
    require(
        vocab_max_size is None or (isinstance(vocab_max_size, int) and vocab_max_size > len(SPECIALS)),
        f"data.prepare.vocab_max_size={vocab_max_size!r} must be null or an int > {len(SPECIALS)}",
    )
    require(
        not images or image_root is not None,
        "data.prepare.images=true needs data.prepare.image_root (the folder the image paths are relative to); "
        "set it, or set data.prepare.images=false for annotations only",
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A stale manifest would vouch for the half-written files of this run if it dies: remove it first.
    (out / MANIFEST).unlink(missing_ok=True)

    parsed = parse(format, annotations, splits)
    skips = _Skips(on_bad)
    records, unsplit = _group(parsed.captions, skips)

    missing: list[str] = []
    if images:
        root = Path(image_root)
        require(
            root.is_dir(),
            f"data.prepare.image_root={image_root} is not a folder; point it at the images",
            DataError,
        )
        missing = [r.file for r in records if not (root / r.file).is_file()]
        if missing and on_missing == "error":
            raise DataError(
                f"{len(missing)} of {len(records)} images are missing under {root} (first: {', '.join(missing[:3])}); "
                f"{_find_missing(format, annotations)} or set data.prepare.on_missing=skip to prepare only the "
                "images present"
            )
        absent = set(missing)
        records = _write_images(
            out, root, [r for r in records if r.file not in absent], image_side, max_pixels, workers, skips
        )
    else:
        # Annotation-only: a store left by an earlier image-mode run no longer matches.
        for name in (IMAGES_BIN, IMAGES_INDEX):
            (out / name).unlink(missing_ok=True)

    counts = {s: {"images": 0, "captions": 0} for s in SPLITS}
    for r in records:
        counts[r.split]["images"] += 1
        counts[r.split]["captions"] += len(r.captions)
    if counts["train"]["images"] == 0:
        raise DataError(
            f"no training images in {annotations} after preparation (counts {counts}, {len(unsplit)} unsplit, "
            f"{len(missing)} missing); give split information with data.prepare.splits"
        )
    vocab = Vocab.build(
        (t for r in records if r.split == "train" for t in r.tokens), vocab_max_size, vocab_min_count
    )
    write_annotations(out, records)
    vocab.save(out / "vocab.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": {
            "format": format,
            "annotations": str(annotations),
            "splits": None if splits is None else str(splits),
            "image_root": None if image_root is None else str(image_root),
        },
        "splits": counts,
        "vocab": {
            "max_size": vocab_max_size,
            "min_count": vocab_min_count,
            "size": len(vocab),
            "from_split": "train",
        },
        "missing": _summary(missing),
        "skipped": skips.by_reason,
        "unsplit": _summary(unsplit),
        "problems": _summary(parsed.problems),
        "content_hash": content_hash(records),
        "images": bool(images),
        "image_side": image_side if images else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / MANIFEST, manifest, indent=2)
    return out


def _call_with_config(fn: Callable[..., Path], what: str, out: str | Path, kwargs: dict[str, Any]) -> Path:
    """Call ``fn(out, **kwargs)``, turning an unknown config key into a one-line ConfigError."""
    signature = inspect.signature(fn)
    try:
        signature.bind(out, **kwargs)
    except TypeError as err:
        valid = sorted(set(signature.parameters) - {"out"})
        raise ConfigError(f"data.prepare does not fit {what} ({err}); valid keys: {valid}") from err
    return Path(fn(out, **kwargs))


def prepare_dataset(out: str | Path, format: str, **kwargs: Any) -> Path:
    """Prepare dataset ``format`` into ``out``; ``kwargs`` go to ``prepare_captions`` or, for shapes, the generator.

    Config ``data.prepare`` maps 1:1 onto these keyword arguments.
    """
    if format == "shapes":
        from captioner.data.shapes import generate_dataset  # written alongside; imported only when used

        return _call_with_config(generate_dataset, "captioner.data.shapes.generate_dataset", out, kwargs)
    if format not in PARSERS:
        raise ConfigError(
            f"data.prepare.format={format!r} is not a dataset format; use one of {sorted(PARSERS)} or shapes"
        )
    return _call_with_config(prepare_captions, "prepare_captions", out, {"format": format, **kwargs})
