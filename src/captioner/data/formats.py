"""Parsers for caption files: each returns raw (image file, split, caption) entries plus reported problems.

Formats: Karpathy ``dataset_*.json``, the original Flickr8k text release, the Kaggle ``captions.txt``
CSV, Flickr30k ``results_20130124.token``, COCO ``captions_*.json`` and JSONL for users' own data.
Parsers only read; they never drop data silently. Structurally malformed input raises a one-line
DataError naming the file, the line and the fix; known quirks (Flickr8k's ``.jpg.1`` key, images in
no split) are kept and reported. Captions come back as written: ``prepare`` tokenises them and decides
what to do with empty ones (``on_bad``).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import ConfigError, DataError

# Every source's split names onto ours: Karpathy's restval is extra training data, Flickr's dev is val.
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "dev": "val", "test": "test"}
FLICKR8K_TOKEN = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
PLAIN_SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}

_TOKEN_LINE = re.compile(r"^(?P<key>[^\t]+)#(?P<n>\d+)\t(?P<caption>.*)$")
# Flickr8k ships one key as "2258277193_586949ec62.jpg.1#0": an image name with a stray suffix.
_STRAY_SUFFIX = re.compile(r"^(?P<file>.+\.(?:jpe?g|png))\.\d+$", re.IGNORECASE)
_COCO_SUBDIR = re.compile(r"^captions_(?P<subdir>\w+)\.json$")


@dataclass(frozen=True)
class RawCaption:
    """One caption of one image as read from a source file (``where`` locates it for messages)."""

    file: str
    split: str | None
    caption: str | None  # None: the image has no captions at all (an empty list)
    where: str


@dataclass
class Parsed:
    """What a parser read: every caption, plus one-line notes on quirks it kept or repaired."""

    captions: list[RawCaption] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def normalize_split(value: object, where: str) -> str | None:
    """Map a source split name (train/restval/val/dev/test, or None) onto train/val/test."""
    if value is None:
        return None
    if value not in SPLIT_ALIASES:
        raise DataError(f"{where}: unknown split {value!r}; use one of {sorted(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[value]


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}; check data.prepare.annotations / data.prepare.splits")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {path} is not UTF-8 text ({err}); re-save it as UTF-8") from err


def _load_json(path: Path, what: str) -> object:
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} line {err.lineno} column {err.colno}: malformed JSON ({err.msg}); fix or re-download the {what}"
        ) from err


def _lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers (trailing whitespace and Windows line ends stripped)."""
    for number, line in enumerate(_read_text(path, what).splitlines(), start=1):
        line = line.rstrip("\r\n ")
        if line.strip():
            yield number, line


# --- split sources ---------------------------------------------------------------------------------


def _read_split_lists(folder: Path, names: dict[str, str]) -> dict[str, str]:
    splits: dict[str, str] = {}
    for split, name in names.items():
        for number, line in _lines(folder / name, "split file"):
            file = line.strip()
            if splits.setdefault(file, split) != split:
                raise DataError(
                    f"{folder / name} line {number}: image {file} is already in split {splits[file]!r}; "
                    "an image may be in one split only, remove one of the lines"
                )
    return splits


def read_splits(path: str | Path) -> dict[str, str]:
    """Image file -> split from a Karpathy json, a ``{"train": [...], ...}`` json or a folder of lists.

    A folder holds either the Flickr8k lists (``Flickr_8k.{train,dev,test}Images.txt``) or
    ``{train,val,test}.txt`` with one image path per line.
    """
    path = Path(path)
    if path.is_dir():
        for names in (FLICKR8K_SPLIT_FILES, PLAIN_SPLIT_FILES):
            if all((path / n).is_file() for n in names.values()):
                return _read_split_lists(path, names)
        raise DataError(
            f"split folder {path} has neither {sorted(FLICKR8K_SPLIT_FILES.values())} nor "
            f"{sorted(PLAIN_SPLIT_FILES.values())}; point data.prepare.splits at the split lists or a Karpathy json"
        )
    obj = _load_json(path, "split file")
    if isinstance(obj, dict) and isinstance(obj.get("images"), list):
        return {
            _karpathy_file(image, f"{path} images[{i}]"): normalize_split(
                image.get("split"), f"{path} images[{i}]"
            )
            for i, image in enumerate(obj["images"])
        }
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        return {file: normalize_split(split, str(path)) for split, files in obj.items() for file in files}
    raise DataError(
        f"split file {path} is neither a Karpathy dataset json nor {{'train': [...], 'val': [...], 'test': [...]}}; "
        "point data.prepare.splits at one of those"
    )


def _assign(files: dict[str, str] | None, file: str) -> str | None:
    return None if files is None else files.get(file)


# --- token files (Flickr8k, Flickr30k) -------------------------------------------------------------


def _parse_token_file(path: Path, splits: dict[str, str] | None) -> Parsed:
    """``<image>#<n>\\t<caption>`` lines, in file order."""
    parsed = Parsed()
    rows = []
    for number, line in _lines(path, "caption token file"):
        match = _TOKEN_LINE.match(line)
        if match is None:
            raise DataError(
                f"{path} line {number}: expected '<image>#<n><TAB><caption>', got {line[:60]!r}; "
                "fix or delete that line"
            )
        rows.append((number, match["key"].strip(), match["caption"]))
    known = {key for _, key, _ in rows}
    for number, key, caption in rows:
        stray = _STRAY_SUFFIX.match(key)
        if stray is not None and stray["file"] in known:
            parsed.problems.append(
                f"{path.name} line {number}: malformed key {key!r} read as {stray['file']!r} "
                "(a known defect of the Flickr8k release)"
            )
            key = stray["file"]
        elif stray is not None:
            parsed.problems.append(f"{path.name} line {number}: suspicious image key {key!r} kept as is")
        parsed.captions.append(RawCaption(key, _assign(splits, key), caption, f"{path} line {number}"))
    _report_split_images_without_captions(parsed, splits, known)
    return parsed


def _report_split_images_without_captions(parsed: Parsed, splits: dict[str, str] | None, known: set) -> None:
    if splits is None:
        return
    orphans = sorted(set(splits) - known - {c.file for c in parsed.captions})
    if orphans:
        parsed.problems.append(
            f"{len(orphans)} images are listed in a split but have no captions (first: {', '.join(orphans[:3])})"
        )


def parse_flickr8k(annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """The original Flickr8k release: ``Flickr8k.token.txt`` + ``Flickr_8k.{train,dev,test}Images.txt``.

    ``annotations`` is the release folder or its token file; splits default to the lists beside it.
    """
    annotations = Path(annotations)
    token = annotations / FLICKR8K_TOKEN if annotations.is_dir() else annotations
    return _parse_token_file(token, read_splits(splits if splits is not None else token.parent))


def parse_flickr30k(annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """Flickr30k ``results_20130124.token``; splits from Karpathy's ``dataset_flickr30k.json`` or lists."""
    return _parse_token_file(Path(annotations), None if splits is None else read_splits(splits))


# --- Karpathy json ---------------------------------------------------------------------------------


def _karpathy_file(image: object, where: str) -> str:
    if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
        raise DataError(f"{where}: expected an object with a 'filename' string; fix or re-download the file")
    return f"{image['filepath']}/{image['filename']}" if image.get("filepath") else image["filename"]


def parse_karpathy(annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """Karpathy's ``dataset_{coco,flickr8k,flickr30k}.json`` (restval merges into train).

    ``splits`` is accepted for a uniform signature but must be None: the file carries its own splits.
    """
    if splits is not None:
        raise ConfigError(
            f"data.prepare.splits={splits} is not used by data.prepare.format=karpathy (the json has its splits); set it to null"
        )
    path = Path(annotations)
    obj = _load_json(path, "Karpathy dataset json")
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise DataError(
            f"{path}: expected a Karpathy dataset json with an 'images' list; check data.prepare.format"
        )
    parsed = Parsed()
    for i, image in enumerate(obj["images"]):
        where = f"{path} images[{i}]"
        file = _karpathy_file(image, where)
        split = normalize_split(image.get("split"), where)
        sentences = image.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"{where}: 'sentences' must be a list; fix or re-download the file")
        if not sentences:
            parsed.captions.append(RawCaption(file, split, "", where))
        for j, sentence in enumerate(sentences):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise DataError(
                    f"{where} sentences[{j}]: expected an object with a 'raw' string; fix the file"
                )
            parsed.captions.append(RawCaption(file, split, sentence["raw"], f"{where} sentences[{j}]"))
    return parsed


# --- CSV (Kaggle Flickr8k captions.txt) ------------------------------------------------------------


def parse_csv(annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """CSV with header ``image,caption`` (optional ``split`` column), as in Kaggle's Flickr8k ``captions.txt``.

    Splits come from a ``split`` column or from ``splits`` (Flickr_8k lists folder or Karpathy json).
    """
    path = Path(annotations)
    text = _read_text(path, "caption csv")
    reader = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    if "image" not in header or "caption" not in header:
        raise DataError(
            f"{path} line 1: header must name 'image' and 'caption' columns, got {header}; fix the header"
        )
    col = {name: header.index(name) for name in ("image", "caption", "split") if name in header}
    split_files = None if splits is None else read_splits(splits)
    parsed = Parsed()
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {reader.line_num}"
        if len(row) != len(header):
            raise DataError(
                f"{where}: expected {len(header)} columns ({','.join(header)}), got {len(row)}; "
                "quote captions that contain commas"
            )
        file = row[col["image"]].strip()
        split = normalize_split(row[col["split"]].strip() or None, where) if "split" in col else None
        if split is None:
            split = _assign(split_files, file)
        parsed.captions.append(RawCaption(file, split, row[col["caption"]], where))
    _report_split_images_without_captions(parsed, split_files, set())
    return parsed


# --- COCO ------------------------------------------------------------------------------------------


def _coco_files(annotations: Path) -> list[Path]:
    if annotations.is_dir():
        files = sorted(p for p in annotations.glob("captions_*.json") if _COCO_SUBDIR.match(p.name))
        if not files:
            raise DataError(
                f"no captions_<split>.json in {annotations}; unzip annotations_trainval2014.zip there"
            )
        return files
    return [annotations]


def parse_coco(annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """COCO ``captions_{train,val}2014.json`` (a folder of them or one file); ``file`` is ``<subdir>/<file_name>``.

    Splits come from ``splits`` (Karpathy's ``dataset_coco.json``); without it train2014 -> train and
    val2014 -> val, and there is no test split.
    """
    split_files = None if splits is None else read_splits(splits)
    parsed = Parsed()
    for path in _coco_files(Path(annotations)):
        match = _COCO_SUBDIR.match(path.name)
        if match is None:
            raise DataError(
                f"COCO caption file {path} must be named captions_<subdir>.json (e.g. captions_train2014.json)"
            )
        subdir = match["subdir"]
        obj = _load_json(path, "COCO caption json")
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("images"), list)
            or not isinstance(obj.get("annotations"), list)
        ):
            raise DataError(
                f"{path}: expected COCO json with 'images' and 'annotations' lists; check data.prepare.format"
            )
        names = {}
        for i, image in enumerate(obj["images"]):
            if (
                not isinstance(image, dict)
                or "id" not in image
                or not isinstance(image.get("file_name"), str)
            ):
                raise DataError(
                    f"{path} images[{i}]: expected {{'id', 'file_name'}}; fix or re-download the file"
                )
            names[image["id"]] = f"{subdir}/{image['file_name']}"
        default_split = {"train": "train", "val": "val"}.get(re.sub(r"\d+$", "", subdir))
        if split_files is None and default_split is None:
            parsed.problems.append(f"{path.name}: no split for subdir {subdir!r} without data.prepare.splits")
        for i, ann in enumerate(obj["annotations"]):
            where = f"{path} annotations[{i}]"
            if (
                not isinstance(ann, dict)
                or ann.get("image_id") not in names
                or not isinstance(ann.get("caption"), str)
            ):
                raise DataError(
                    f"{where}: expected {{'image_id' of a listed image, 'caption' string}}; fix or re-download the file"
                )
            file = names[ann["image_id"]]
            split = default_split if split_files is None else split_files.get(file)
            parsed.captions.append(RawCaption(file, split, ann["caption"], where))
    if split_files is None:
        parsed.problems.append(
            "no data.prepare.splits given: using train2014 -> train, val2014 -> val, no test split"
        )
    return parsed


# --- JSONL -----------------------------------------------------------------------------------------


def parse_jsonl(annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """Users' own data: one ``{"image": "path", "captions": [...], "split": "train"}`` object per line.

    ``split`` may be omitted when ``splits`` names a split source (or the image is left unsplit).
    """
    path = Path(annotations)
    split_files = None if splits is None else read_splits(splits)
    parsed = Parsed()
    for number, line in _lines(path, "JSONL caption file"):
        where = f"{path} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: malformed JSON ({err.msg}); each line must be one JSON object"
            ) from err
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"].strip():
            raise DataError(f'{where}: expected {{"image": "path", "captions": [...]}}; add the image path')
        captions = obj.get("captions")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(f'{where}: "captions" must be a list of strings; fix that line')
        file = obj["image"].strip()
        split = normalize_split(obj.get("split"), where)
        if split is None:
            split = _assign(split_files, file)
        # An image without captions is bad data for prepare's on_bad to decide, like an empty caption.
        for caption in captions or [None]:
            parsed.captions.append(RawCaption(file, split, caption, where))
    return parsed


PARSERS = {
    "karpathy": parse_karpathy,
    "flickr8k": parse_flickr8k,
    "csv": parse_csv,
    "flickr30k": parse_flickr30k,
    "coco": parse_coco,
    "jsonl": parse_jsonl,
}


def parse(format: str, annotations: str | Path, splits: str | Path | None = None) -> Parsed:
    """Parse ``annotations`` in the named format (one of ``PARSERS``)."""
    if format not in PARSERS:
        raise ConfigError(
            f"data.prepare.format={format!r} is not a caption format; use one of {sorted(PARSERS)} or shapes"
        )
    return PARSERS[format](annotations, splits)
