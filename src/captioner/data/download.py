"""Fetch raw caption datasets: resumable streaming download, checksum check, zip extraction.

``python -m captioner.data.download coco karpathy --dest data/raw`` puts each dataset under
``<dest>/<name>/``, where the ``conf/data/*.yaml`` defaults look for it. Parsing lives in ``formats``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from captioner.errors import CaptionerError, ConfigError, DataError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One archive: where it lives and how to check it (md5/sha256 where published, else size)."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = True


DATASETS: dict[str, list[Resource]] = {
    "coco": [
        Resource(
            "http://images.cocodataset.org/zips/train2014.zip",
            "train2014.zip",
            md5="0da8c0bd3d6becc4dcb32757491aca88",
        ),
        Resource(
            "http://images.cocodataset.org/zips/val2014.zip",
            "val2014.zip",
            md5="a3d79f5ed8d289b7a7554ce06a5782b3",
        ),
        Resource(
            "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
            "annotations_trainval2014.zip",
            md5="0a379cfc70b0e71301e0f377548639bd",
        ),
    ],
    # The commonly used GitHub release mirror of the Illinois Flickr8k archives.
    "flickr8k": [
        Resource(
            "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
            "Flickr8k_Dataset.zip",
            md5="f18a1e2920de5bd84dae7cf08ec78978",
        ),
        Resource(
            "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
            "Flickr8k_text.zip",
            md5="bf6c1abcb8e4a833b7f922104de18627",
        ),
    ],
    # No checksum is published for Karpathy's splits; the computed sha256 is printed to pin it.
    "karpathy": [
        Resource(
            "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
            "caption_datasets.zip",
        ),
    ],
}
MANUAL = {
    "flickr30k": (
        "Flickr30k is distributed only through its owners' request form "
        "(https://shannon.cs.illinois.edu/DenotationGraph/); put results_20130124.token and "
        "flickr30k-images/ under {dest}/flickr30k, and fetch its splits with `download karpathy`"
    ),
}

# Module-level so tests can replace the network with a local opener.
_open = urllib.request.urlopen


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, resource: Resource) -> str | None:
    """None when ``path`` matches the resource's checksum (or size), else a one-line reason."""
    if resource.size is not None and path.stat().st_size != resource.size:
        return f"size {path.stat().st_size} != expected {resource.size}"
    for algorithm in ("sha256", "md5"):
        expected = getattr(resource, algorithm)
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected:
                return f"{algorithm} {actual} != expected {expected}"
    return None


def fetch(url: str, target: Path) -> Path:
    """Stream ``url`` to ``target`` via ``target.part``, resuming a partial ``.part`` with an HTTP Range."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = _open(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: the .part file is already complete
            os.replace(part, target)
            return target
        raise DataError(f"download of {url} failed (HTTP {err.code}); check the URL or retry later") from err
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"cannot reach {url} ({err}); check the network and re-run to resume") from err
    with response:
        status = getattr(response, "status", None)
        if have and status != 206:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("Content-Length") if response.headers else None
        total = int(length) + have if length else None
        try:
            with (
                open(part, "ab" if have else "wb") as f,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=target.name, disable=None
                ) as bar,
            ):
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except OSError as err:
            raise DataError(f"download of {url} broke off ({err}); re-run to resume from {part}") from err
    os.replace(part, target)
    return target


def extract(archive: Path, dest: Path) -> None:
    """Unzip ``archive`` into ``dest`` once (a marker file records a finished extraction)."""
    marker = dest / f".{archive.name}.extracted"
    if marker.exists():
        return
    try:
        # ZipFile.extractall drops absolute paths and ".." components, so members stay inside dest.
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive} is not a valid zip ({err}); delete it and download again") from err
    marker.touch()


def download(name: str, dest: str | Path) -> Path:
    """Download, verify and extract dataset ``name`` into ``dest/name``; re-runs resume and skip done work."""
    dest = Path(dest)
    if name in MANUAL:
        raise DataError(MANUAL[name].format(dest=dest))
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r} to download; use one of {sorted([*DATASETS, *MANUAL])}")
    folder = dest / name
    folder.mkdir(parents=True, exist_ok=True)
    for resource in DATASETS[name]:
        target = folder / resource.filename
        if not target.exists():
            fetch(resource.url, target)
        problem = verify(target, resource)
        if problem is not None:
            target.unlink()  # a corrupt archive must not be taken for a finished download next time
            raise DataError(f"{target} failed its checksum ({problem}); re-run to download it again")
        if resource.md5 is None and resource.sha256 is None and resource.size is None:
            print(f"{target.name}: no published checksum; sha256 {file_digest(target, 'sha256')}")
        if resource.extract:
            extract(target, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    """CLI: download one or more datasets; a user's mistake prints one line and exits 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted([*DATASETS, *MANUAL]))
    parser.add_argument("--dest", default="data/raw", help="folder that receives <name>/ (default data/raw)")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            print(f"{name}: ready in {download(name, args.dest)}")
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
