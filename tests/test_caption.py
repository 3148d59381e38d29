"""caption.py / captioner.captioning on photos and shapes images: captions, attention figures, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.figure
import pytest
import torch
from conftest import SHARED, TinyRun, run_script
from PIL import Image

from captioner.captioning import caption_files, find_images, read_image
from captioner.data.store import ImageStore
from captioner.errors import DataError
from captioner.model.load import load_captioner

PHOTOS = SHARED / "data" / "flickr8k" / "images"
CPU = torch.device("cpu")


def _photo() -> Path:
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if not photos:
        pytest.skip(f"no Flickr8k photos in {PHOTOS} (the offline ../shared folder beside the repo)")
    return photos[0]


def _shapes_image(tiny_run: TinyRun, folder: Path, name: str = "shape.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ImageStore(tiny_run.data_root).pil("shapes_test_00000").save(folder / name)
    return folder / name


@pytest.fixture
def panel_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Axes showing an image in each saved figure (the input panel + one per word)."""
    counts: list[int] = []
    original = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        counts.append(sum(1 for ax in fig.axes if ax.images))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return counts


def test_photo_gets_caption_and_one_attention_panel_per_word(
    tiny_run: TinyRun, tmp_path: Path, panel_counter
):
    loaded = load_captioner(tiny_run.checkpoint)
    decode = {"method": "beam", "k": 3, "n_best": 3, "max_len": 8}
    done, skipped = caption_files(loaded, [_photo()], decode, CPU, tmp_path)
    assert skipped == []
    (c,) = done
    assert c.words and c.figure == tmp_path / f"{_photo().stem}.png" and c.figure.is_file()
    assert panel_counter == [1 + len(c.words)] and c.panels == len(c.words)
    scores = [s for _, s in c.n_best]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and c.score == scores[0]
    assert c.figure.stat().st_size < 300_000


def test_exif_orientation_is_applied(tmp_path: Path):
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_bad_images_are_one_line_errors(tmp_path: Path):
    (tmp_path / "notes.jpg").write_text("not an image\n")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "red").save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "readme.txt").write_text("not an image either\n")
    for name in ("notes.jpg", "cut.png", "readme.txt"):
        with pytest.raises(DataError, match=rf"^{name}: cannot read image: \S.*$"):
            read_image(tmp_path / name)
    # Every file is a candidate: PIL, not the suffix, decides what is an image.
    assert [p.name for p in find_images(tmp_path)] == ["cut.png", "good.png", "notes.jpg", "readme.txt"]
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is an empty folder"):
        find_images(tmp_path / "empty")


def test_cli_mixed_folder_captions_every_format_pil_opens_and_names_the_rest(
    tiny_run: TinyRun, tmp_path: Path
):
    images = tmp_path / "mixed"
    shape = _shapes_image(tiny_run, images, "source.png")
    picture = Image.open(shape).convert("RGB")
    formats = {
        "a.jpg": "JPEG",
        "b.png": "PNG",
        "c.gif": "GIF",
        "d.tiff": "TIFF",
        "e.bmp": "BMP",
        "f.webp": "WEBP",
    }
    for name, fmt in formats.items():
        picture.save(images / name, format=fmt)
    picture.save(images / "g_no_suffix", format="PNG")  # an image by content, whatever its name
    shape.unlink()
    (images / "notes.txt").write_text("a text file\n")
    full = (images / "a.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(full[: len(full) // 2])
    out = tmp_path / "out"
    proc = run_script(
        "caption.py",
        f"checkpoint={tiny_run.checkpoint}",
        f"images={images}",
        f"out={out}",
        "figures=false",
        "decode=greedy",
        "decode.max_len=8",
        cwd=tiny_run.cwd,
    )
    captioned = [*formats, "g_no_suffix"]
    result = json.loads((out / "captions.json").read_text())
    assert [c["file"] for c in result["captions"]] == captioned
    assert [s["file"] for s in result["skipped"]] == ["notes.txt", "truncated.jpg"]
    assert all(s["reason"].startswith("cannot read image: ") for s in result["skipped"])
    # a file skipped is not an error: the run succeeds (status 0) and says "skipped", with the reason
    lines = proc.stderr.strip().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["notes.txt", "truncated.jpg"]
    assert all(re.fullmatch(r"skipped: \S+ \(cannot read image: .+\)", line) for line in lines), lines
    assert "error" not in proc.stderr
    printed = [line.split(":", 1)[0] for line in proc.stdout.strip().splitlines()[:-1]]
    assert printed == captioned
    assert proc.stdout.strip().splitlines()[-1].startswith("captioned 7, skipped 2: notes.txt, truncated.jpg")


def test_cli_folder_with_a_bad_image_captions_the_rest(tiny_run: TinyRun, tmp_path: Path):
    images = tmp_path / "images"
    _shapes_image(tiny_run, images, "a_shape.png")
    (images / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "out"
    proc = run_script(
        "caption.py",
        f"checkpoint={tiny_run.checkpoint}",
        f"images={images}",
        f"out={out}",
        "decode=greedy",
        "decode.max_len=8",
        cwd=tiny_run.cwd,
    )
    (skipped,) = proc.stderr.strip().splitlines()
    assert skipped.startswith("skipped: b_broken.jpg (cannot read image: ")
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("a_shape.png: ")
    assert lines[-1].startswith("captioned 1, skipped 1: b_broken.jpg")
    result = json.loads((out / "captions.json").read_text())
    assert [c["file"] for c in result["captions"]] == ["a_shape.png"]
    assert result["captions"][0]["caption"] == lines[0].split(": ", 1)[1]
    assert (out / "a_shape.png").is_file() and len(result["skipped"]) == 1

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_text("nope")
    proc = run_script(
        "caption.py",
        f"checkpoint={tiny_run.checkpoint}",
        f"images={only_bad}",
        f"out={out}",
        cwd=tiny_run.cwd,
        check=False,
    )
    assert proc.returncode == 2
    assert "captioned 0, skipped 1: x.png" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no image of images=")
