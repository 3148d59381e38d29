"""prepare_dataset end to end: real Flickr8k, format equivalence, bad input, atomicity; the CLI; download."""

import csv
import hashlib
import inspect
import io
import json
import os
import subprocess
import sys
import types
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from captioner.data import download as dl
from captioner.data.annotations import read_annotations
from captioner.data.prepare import prepare_captions, prepare_dataset
from captioner.data.records import MANIFEST, read_manifest
from captioner.data.store import ImageStore
from captioner.data.vocab import Vocab
from captioner.errors import ConfigError, DataError
from captioner.prepare import CONF_DIR, check_inputs, run

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
needs_flickr8k = pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(), reason=f"Flickr8k text release not found at {FLICKR8K}"
)
MY_DATA = ("flickr8k", "flickr30k", "coco", "karpathy_flickr8k", "jsonl")


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def jpeg(path: Path, size=(40, 30), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny(tmp_path):
    """Four generated photos and a JSONL source naming them (train a, b; val c; test d)."""
    images = tmp_path / "images"
    jpeg(images / "a.jpg", (40, 30))
    jpeg(images / "sub" / "b.jpg", (30, 60), (10, 200, 10))
    jpeg(images / "c.jpg")
    jpeg(images / "d.jpg")
    rows = [
        {
            "image": "a.jpg",
            "captions": ["A red box .", "A red square .", "Red box", "A box", "box", "red", "A red box !"],
            "split": "train",
        },
        {"image": "sub/b.jpg", "captions": ["A green box ."], "split": "train"},
        {"image": "c.jpg", "captions": ["A zebra ."], "split": "val"},
        {"image": "d.jpg", "captions": ["A box ."], "split": "test"},
    ]
    return types.SimpleNamespace(root=tmp_path, images=images, rows=rows, out=tmp_path / "out")


def run_tiny(tiny, rows=None, **kwargs) -> Path:
    source = write_jsonl(tiny.root / "captions.jsonl", tiny.rows if rows is None else rows)
    options = {"image_root": tiny.images, "image_side": 16, "vocab_min_count": 1, "workers": 1, **kwargs}
    return prepare_dataset(tiny.out, "jsonl", annotations=source, **options)


# --- acceptance 1: the real Flickr8k release ---------------------------------------------------------


@needs_flickr8k
def test_flickr8k_annotation_only_counts_and_reports(tmp_path):
    out = prepare_dataset(tmp_path / "f8k", "flickr8k", annotations=FLICKR8K, images=False)
    manifest = read_manifest(out)
    assert manifest["splits"] == {
        "train": {"images": 6000, "captions": 30000},
        "val": {"images": 1000, "captions": 5000},
        "test": {"images": 1000, "captions": 5000},
    }
    assert manifest["unsplit"]["count"] == 92 and len(manifest["unsplit"]["examples"]) > 0
    assert any("2258277193_586949ec62.jpg.1" in p for p in manifest["problems"]["examples"])
    assert manifest["images"] is False and not (out / "images.bin").exists()
    vocab = Vocab.load(out / "vocab.json")
    assert len(vocab) == manifest["vocab"]["size"] and "dog" in vocab.stoi
    records = read_annotations(out)
    assert {r.split for r in records} == {"train", "val", "test"}


@needs_flickr8k
def test_flickr8k_image_mode_prepares_the_photos_present(tmp_path):
    photos = FLICKR8K / "images"
    out = prepare_dataset(
        tmp_path / "f8k", "flickr8k", annotations=FLICKR8K, image_root=photos, on_missing="skip", workers=2
    )
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["images"] + manifest["splits"]["val"]["images"] == 14
    assert manifest["missing"]["count"] == 8000 - 14
    store = ImageStore(out)
    assert sorted(store.index) == sorted(p.name for p in photos.glob("*.jpg"))
    assert all(min(store.size(i)) == 256 for i in store.index)
    assert min(store.pil(next(iter(store.index))).size) == 256
    with pytest.raises(DataError) as err:
        prepare_dataset(tmp_path / "f8k_err", "flickr8k", annotations=FLICKR8K, image_root=photos)
    message = one_line(err)
    assert "7986 of 8000 images are missing" in message and "data.prepare.on_missing=skip" in message
    assert "python -m captioner.data.download --help" in message
    assert not (tmp_path / "f8k_err" / MANIFEST).exists()


# --- acceptance 2: one set of captions in four formats ---------------------------------------------


@needs_flickr8k
def test_same_captions_in_every_format_prepare_identically(tmp_path):
    lists = {
        split: (FLICKR8K / f"Flickr_8k.{name}Images.txt").read_text().split()
        for split, name in (("train", "train"), ("val", "dev"), ("test", "test"))
    }
    keep = {"train": lists["train"][:150], "val": lists["val"][:40], "test": lists["test"][:40]}
    split_of = {f: s for s, files in keep.items() for f in files}
    rows = []  # (file, caption) in token-file order, for the kept images plus a few unsplit ones
    unsplit = {"1155138244_859fd6e079.jpg", "2258277193_586949ec62.jpg"}
    for line in (FLICKR8K / "Flickr8k.token.txt").read_text().splitlines():
        key, caption = line.split("\t")
        file = key.split("#")[0].removesuffix(".1")
        if file in split_of or file in unsplit:
            rows.append((key.split("#")[0], file, caption))

    src = tmp_path / "src"
    (src / "f8k").mkdir(parents=True)
    (src / "f8k" / "Flickr8k.token.txt").write_text(
        "".join(f"{key}#{i % 5}\t{cap}\n" for i, (key, _, cap) in enumerate(rows))
    )
    for split, name in (("train", "train"), ("val", "dev"), ("test", "test")):
        (src / "f8k" / f"Flickr_8k.{name}Images.txt").write_text("\n".join(keep[split]) + "\n")
    by_file: dict[str, list[str]] = {}
    for _, file, caption in rows:
        by_file.setdefault(file, []).append(caption)
    karpathy = {
        "dataset": "flickr8k",
        "images": [
            {"filename": f, "split": split_of[f], "sentences": [{"raw": c} for c in caps]}
            for f, caps in by_file.items()
            if f in split_of
        ],
    }
    (src / "dataset_flickr8k.json").write_text(json.dumps(karpathy))
    with open(src / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows((file, caption) for _, file, caption in rows)
    write_jsonl(
        src / "captions.jsonl",
        [
            {"image": f, "captions": caps, **({"split": split_of[f]} if f in split_of else {})}
            for f, caps in by_file.items()
        ],
    )

    common = {"images": False, "vocab_min_count": 2}
    outs = {
        "flickr8k": prepare_dataset(tmp_path / "a", "flickr8k", annotations=src / "f8k", **common),
        "karpathy": prepare_dataset(
            tmp_path / "b", "karpathy", annotations=src / "dataset_flickr8k.json", **common
        ),
        "csv": prepare_dataset(
            tmp_path / "c", "csv", annotations=src / "captions.txt", splits=src / "f8k", **common
        ),
        "jsonl": prepare_dataset(tmp_path / "d", "jsonl", annotations=src / "captions.jsonl", **common),
    }
    manifests = {name: read_manifest(out) for name, out in outs.items()}
    assert manifests["flickr8k"]["splits"]["train"] == {"images": 150, "captions": 750}
    assert len({m["content_hash"] for m in manifests.values()}) == 1
    assert len({json.dumps(m["splits"]) for m in manifests.values()}) == 1
    vocabs = {name: Vocab.load(out / "vocab.json") for name, out in outs.items()}
    assert all(v == vocabs["flickr8k"] for v in vocabs.values()) and len(vocabs["flickr8k"]) > 100
    references = {
        name: [(r.id, r.split, r.captions) for r in read_annotations(out)] for name, out in outs.items()
    }
    assert all(r == references["flickr8k"] for r in references.values())


# --- image mode on generated photos ----------------------------------------------------------------


def test_image_mode_resizes_keeps_every_reference_and_builds_vocab_from_train(tiny):
    out = run_tiny(tiny)
    manifest = read_manifest(out)
    assert manifest["splits"]["train"] == {"images": 2, "captions": 8}
    assert manifest["images"] is True and manifest["image_side"] == 16
    store = ImageStore(out)
    assert store.size("a.jpg") == (21, 16) and store.size("sub/b.jpg") == (
        16,
        32,
    )  # shorter side 16, aspect kept
    assert tuple(store.tensor("sub/b.jpg").shape) == (3, 32, 16)
    vocab = Vocab.load(out / "vocab.json")
    assert "green" in vocab.stoi and "zebra" not in vocab.stoi  # val words never enter the vocabulary
    record = {r.id: r for r in read_annotations(out)}["a.jpg"]
    assert len(record.captions) == 7 and record.tokens[0] == ["a", "red", "box"]


def test_parallel_workers_write_the_same_store(tiny):
    run_tiny(tiny, workers=2)
    parallel = ((tiny.out / "images.bin").read_bytes(), (tiny.out / "images.json").read_text())
    run_tiny(tiny, workers=1)
    assert parallel == ((tiny.out / "images.bin").read_bytes(), (tiny.out / "images.json").read_text())


def test_annotation_only_needs_no_images_and_drops_a_stale_store(tiny):
    run_tiny(tiny)
    out = run_tiny(tiny, images=False, image_root=None)
    assert read_manifest(out)["images"] is False and not (out / "images.bin").exists()


# --- acceptance 3: bad input -----------------------------------------------------------------------


def test_corrupt_jpeg_errors_or_is_skipped(tiny):
    good = (tiny.images / "c.jpg").read_bytes()
    (tiny.images / "c.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (tiny.images / "d.jpg").write_text("not an image")
    with pytest.raises(DataError) as err:
        run_tiny(tiny)
    message = one_line(err)
    assert "c.jpg" in message and "on_bad=skip" in message
    assert not (tiny.out / MANIFEST).exists()
    manifest = read_manifest(run_tiny(tiny, on_bad="skip"))
    assert manifest["skipped"]["corrupt_image"] == {"count": 2, "examples": ["c.jpg", "d.jpg"]}
    assert sorted(ImageStore(tiny.out).index) == ["a.jpg", "sub/b.jpg"]
    assert {r.id for r in read_annotations(tiny.out)} == {"a.jpg", "sub/b.jpg"}


def test_missing_image_errors_with_count_or_is_skipped(tiny):
    (tiny.images / "d.jpg").unlink()
    with pytest.raises(DataError) as err:
        run_tiny(tiny)
    message = one_line(err)
    assert "1 of 4 images are missing" in message and "d.jpg" in message
    assert "set data.prepare.on_missing=skip" in message
    # a user's own JSONL: nothing to download, the image root is what to check
    assert "captioner.data.download" not in message and "check that data.prepare.image_root" in message
    manifest = read_manifest(run_tiny(tiny, on_missing="skip"))
    assert manifest["missing"] == {"count": 1, "examples": ["d.jpg"]}
    assert manifest["splits"]["test"]["images"] == 0


def test_missing_image_of_a_public_dataset_suggests_its_download(tiny):
    (tiny.images / "d.jpg").unlink()
    karpathy = {
        "images": [
            {"filename": r["image"], "split": r["split"], "sentences": [{"raw": c} for c in r["captions"]]}
            for r in tiny.rows
        ]
    }
    (tiny.root / "dataset_tiny.json").write_text(json.dumps(karpathy))
    with pytest.raises(DataError) as err:
        prepare_dataset(
            tiny.out, "karpathy", annotations=tiny.root / "dataset_tiny.json", image_root=tiny.images
        )
    message = one_line(err)
    assert "python -m captioner.data.download --help" in message and "data.prepare.on_missing=skip" in message


def test_malformed_jsonl_and_token_line_name_file_and_line(tiny, tmp_path):
    source = tiny.root / "captions.jsonl"
    source.write_text('{"image": "a.jpg", "captions": ["x"], "split": "train"}\n{"image": oops}\n')
    with pytest.raises(DataError) as err:
        prepare_dataset(tiny.out, "jsonl", annotations=source, images=False)
    assert "captions.jsonl line 2: malformed JSON" in one_line(err)
    token = tmp_path / "results_20130124.token"
    token.write_text("1.jpg#0\tok\n1.jpg 1 broken\n")
    with pytest.raises(DataError) as err:
        prepare_dataset(tiny.out, "flickr30k", annotations=token, images=False)
    assert "results_20130124.token line 2" in one_line(err)


@pytest.mark.parametrize("bad_path", ["../x.jpg", "sub/../../x.jpg", "/etc/x.jpg"])
def test_path_escaping_the_image_root_errors_or_is_skipped(tiny, bad_path):
    jpeg(tiny.root / "x.jpg")  # exists outside the root: must still be refused
    rows = [*tiny.rows, {"image": bad_path, "captions": ["Sneaky ."], "split": "train"}]
    with pytest.raises(DataError) as err:
        run_tiny(tiny, rows)
    message = one_line(err)
    assert bad_path in message and "escapes the image root" in message
    with pytest.raises(DataError, match="escapes"):
        run_tiny(tiny, rows, images=False)  # unsafe even when no image is read
    manifest = read_manifest(run_tiny(tiny, rows, on_bad="skip"))
    assert manifest["skipped"]["unsafe_path"] == {"count": 1, "examples": [bad_path]}
    assert manifest["splits"]["train"]["images"] == 2


def test_image_over_the_pixel_limit_errors_or_is_skipped(tiny):
    jpeg(tiny.images / "a.jpg", (60, 40))  # 2400 pixels; the rest are at most 1800
    with pytest.raises(DataError) as err:
        run_tiny(tiny, max_pixels=2000)
    message = one_line(err)
    assert "a.jpg" in message and "60x40" in message and "data.prepare.max_pixels=2000" in message
    manifest = read_manifest(run_tiny(tiny, max_pixels=2000, on_bad="skip"))
    assert manifest["skipped"]["too_large"] == {"count": 1, "examples": ["a.jpg"]}
    assert "a.jpg" not in ImageStore(tiny.out)


def test_empty_caption_errors_or_is_skipped(tiny):
    rows = [dict(r) for r in tiny.rows]
    rows[0]["captions"] = [*rows[0]["captions"], " ... "]
    rows[3]["captions"] = []  # d.jpg has no caption at all
    with pytest.raises(DataError) as err:
        run_tiny(tiny, rows)
    message = one_line(err)
    assert "captions.jsonl line 1: empty caption" in message and "set data.prepare.on_bad=skip" in message
    manifest = read_manifest(run_tiny(tiny, rows, on_bad="skip"))
    assert manifest["skipped"]["empty_caption"]["count"] == 1
    assert manifest["skipped"]["no_captions"]["examples"][0].endswith("captions.jsonl line 4")
    assert "no_valid_caption" not in manifest["skipped"]  # d.jpg counted once, as what it is
    assert manifest["splits"]["train"]["captions"] == 8 and manifest["splits"]["test"]["images"] == 0


def test_image_with_no_captions_is_named_as_such(tiny):
    rows = [dict(r) for r in tiny.rows]
    rows[3]["captions"] = []
    with pytest.raises(DataError) as err:
        run_tiny(tiny, rows)
    message = one_line(err)
    assert "captions.jsonl line 4: image d.jpg has no captions (an empty list)" in message
    assert "empty caption" not in message and "set data.prepare.on_bad=skip" in message


def test_interrupted_prepare_never_leaves_a_manifest(tiny, monkeypatch):
    run_tiny(tiny)
    assert (tiny.out / MANIFEST).exists()
    calls = []

    def dies_on_second_image(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    import captioner.data.prepare as prepare_module

    real = prepare_module._resize_one
    monkeypatch.setattr(prepare_module, "_resize_one", dies_on_second_image)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny)
    assert not (tiny.out / MANIFEST).exists()  # the old manifest went first; no new one was written
    assert not list(tiny.out.glob(".*tmp"))  # no half-written file under a final-looking name...
    assert (tiny.out / ".images.bin.partial").exists()  # ...but the images done so far wait for a rerun
    with pytest.raises(DataError, match="preparation did not finish"):
        read_manifest(tiny.out)
    monkeypatch.setattr(
        prepare_module, "write_annotations", lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    )
    monkeypatch.setattr(prepare_module, "_resize_one", real)
    with pytest.raises(OSError):
        run_tiny(tiny)
    assert not (tiny.out / MANIFEST).exists()


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_missing": "ignore"}, "on_missing='ignore'"),
        ({"on_bad": "warn"}, "on_bad='warn'"),
        ({"image_side": 0}, "image_side=0"),
        ({"workers": 0}, "workers=0"),
        ({"vocab_max_size": 3}, "vocab_max_size=3"),
        ({"image_root": None}, "needs data.prepare.image_root"),
        ({"imagesize": 3}, "unexpected keyword argument 'imagesize'"),
    ],
)
def test_bad_options_are_one_line_config_errors(tiny, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run_tiny(tiny, **kwargs)
    assert not (tiny.out / MANIFEST).exists()


def test_shapes_dispatches_to_the_generator(tmp_path, monkeypatch):
    calls = []

    def generate_dataset(out, n_images=10, seed=0):
        calls.append((out, n_images, seed))
        return out

    monkeypatch.setitem(
        sys.modules, "captioner.data.shapes", types.SimpleNamespace(generate_dataset=generate_dataset)
    )
    assert prepare_dataset(tmp_path, "shapes", n_images=3) == tmp_path
    assert calls == [(tmp_path, 3, 0)]
    with pytest.raises(ConfigError, match="generate_dataset"):
        prepare_dataset(tmp_path, "shapes", image_side=64)


@pytest.mark.parametrize("name", MY_DATA)
def test_data_configs_map_onto_prepare(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=[f"data={name}"])
    prepare = dict(cfg.data.prepare)
    assert set(prepare) - {"format"} <= set(inspect.signature(prepare_captions).parameters)
    from captioner.data.loaders import build_loaders

    assert set(cfg.data.loader) <= set(inspect.signature(build_loaders).parameters)  # one hop: its kwargs
    assert set(cfg.data.augment) == {
        "hflip",
        "color_jitter",
        "noise_std",
        "optical_strength",
        "crop_scale_min",
    }
    assert cfg.data.root.startswith("data/")


def test_cli_prints_a_summary_or_one_error_line(tiny, capsys):
    source = write_jsonl(tiny.root / "captions.jsonl", tiny.rows)
    overrides = [f"data.root={tiny.out}", f"data.prepare.annotations={source}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "prepare",
            [
                *overrides,
                "data=jsonl",
                f"data.prepare.image_root={tiny.images}",
                "data.prepare.vocab_min_count=1",
            ],
        )
    assert run(cfg) == tiny.out and (tiny.out / MANIFEST).exists()
    assert "train             2         8" in capsys.readouterr().out
    # The real process: a user's mistake is one line on stderr and exit status 2, no traceback.
    command = [
        sys.executable,
        "-m",
        "captioner.prepare",
        "data=jsonl",
        *overrides,
        "data.prepare.image_root=nowhere",
    ]
    bad = subprocess.run(command, capture_output=True, text=True, cwd=tiny.root)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "image_root=nowhere" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data=flickr8k"], r"annotations=\.\./shared/data/flickr8k not found from the launch folder "),
        (["data=flickr8k"], r"; set paths\.shared \(now \.\./shared\) or data\.prepare\.annotations to"),
        (
            ["data=coco", "paths.data_dir=/no"],
            r"; set paths\.data_dir \(now /no\) or data\.prepare\.annotations",
        ),
        (
            ["data=jsonl", "data.prepare.annotations=x.jsonl"],
            r"; set data\.prepare\.annotations to an absolute",
        ),
    ],
)
def test_missing_inputs_name_the_key_to_set(overrides, match, tmp_path, monkeypatch):
    # Relative defaults (paths.shared: ../shared) start at the launch folder, which an installed user picks.
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides)
    with pytest.raises(DataError, match=match):
        check_inputs(cfg)


# --- download: checksum and resume, without a network --------------------------------------------------


@pytest.fixture
def archive(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inner/hello.txt", "hello" * 1000)
    data = buf.getvalue()
    path = tmp_path / "remote" / "tiny.zip"
    path.parent.mkdir()
    path.write_bytes(data)
    return types.SimpleNamespace(path=path, data=data, md5=hashlib.md5(data).hexdigest())


def test_download_file_url_verifies_and_extracts(tmp_path, archive, monkeypatch):
    monkeypatch.setitem(
        dl.DATASETS, "tiny", [dl.Resource(archive.path.as_uri(), "tiny.zip", md5=archive.md5)]
    )
    folder = dl.download("tiny", tmp_path / "raw")
    assert (folder / "inner" / "hello.txt").read_text() == "hello" * 1000
    assert (folder / "tiny.zip").read_bytes() == archive.data and not (folder / "tiny.zip.part").exists()
    archive.path.unlink()  # a second run needs no network: the archive is verified and already extracted
    assert dl.download("tiny", tmp_path / "raw") == folder


def test_download_checksum_mismatch_fails_and_discards(tmp_path, archive, monkeypatch):
    monkeypatch.setitem(dl.DATASETS, "tiny", [dl.Resource(archive.path.as_uri(), "tiny.zip", md5="0" * 32)])
    with pytest.raises(DataError) as err:
        dl.download("tiny", tmp_path / "raw")
    assert "failed its checksum" in one_line(err)
    assert not (tmp_path / "raw" / "tiny" / "tiny.zip").exists()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


@pytest.mark.parametrize("honours_range", [True, False])
def test_download_resumes_a_partial_file(tmp_path, archive, monkeypatch, honours_range):
    folder = tmp_path / "raw" / "tiny"
    folder.mkdir(parents=True)
    (folder / "tiny.zip.part").write_bytes(archive.data[:100])
    seen = []

    def opener(request, timeout):
        seen.append(request.get_header("Range"))
        start = int(request.get_header("Range")[6:-1]) if honours_range else 0
        return FakeResponse(archive.data[start:], 206 if honours_range else 200)

    monkeypatch.setattr(dl, "_open", opener)
    monkeypatch.setitem(
        dl.DATASETS, "tiny", [dl.Resource("https://example.invalid/tiny.zip", "tiny.zip", md5=archive.md5)]
    )
    dl.download("tiny", tmp_path / "raw")
    assert seen == ["bytes=100-"]
    assert (folder / "tiny.zip").read_bytes() == archive.data


def test_download_unknown_and_manual_datasets(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        dl.download("imagenet", tmp_path)
    with pytest.raises(DataError, match="request form"):
        dl.download("flickr30k", tmp_path)


# --- resume, permissions, workers --------------------------------------------------------------------


def test_interrupted_image_prepare_resumes_to_the_same_store(tiny, monkeypatch):
    import captioner.data.prepare as prepare_module

    run_tiny(tiny)
    whole = {
        name: (tiny.out / name).read_bytes() for name in ("images.bin", "images.json", "annotations.json")
    }
    real = prepare_module._resize_one
    calls = []

    def dies_on_third_image(task):
        calls.append(task[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_module, "_resize_one", dies_on_third_image)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny)
    monkeypatch.setattr(prepare_module, "_resize_one", lambda task: calls.append(task[0]) or real(task))
    done_before = calls[:2]
    calls.clear()
    out = run_tiny(tiny)
    assert calls and not set(calls) & set(done_before)  # only the images not done before
    assert {name: (out / name).read_bytes() for name in whole} == whole
    assert not list(out.glob(".*partial*"))


def test_resume_replays_skipped_images_into_the_manifest(tiny, monkeypatch):
    import captioner.data.prepare as prepare_module

    (tiny.images / "c.jpg").write_text("not an image")
    expected = read_manifest(run_tiny(tiny, on_bad="skip"))["skipped"]
    real = prepare_module._resize_one
    calls = []

    def dies_on_last_image(task):
        calls.append(task)
        if task[0] == sorted(r["image"] for r in tiny.rows)[-1]:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_module, "_resize_one", dies_on_last_image)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny, on_bad="skip")
    monkeypatch.setattr(prepare_module, "_resize_one", real)
    assert read_manifest(run_tiny(tiny, on_bad="skip"))["skipped"] == expected


def test_other_settings_do_not_resume(tiny, monkeypatch):
    import captioner.data.prepare as prepare_module

    real = prepare_module._resize_one
    calls = []

    def dies_on_second_image(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_module, "_resize_one", dies_on_second_image)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny)
    monkeypatch.setattr(prepare_module, "_resize_one", real)
    out = run_tiny(tiny, image_side=20)
    assert ImageStore(out).size("sub/b.jpg") == (20, 40)  # not the side-16 image of the broken run


def test_prepared_files_are_readable_by_the_group(tiny):
    old = os.umask(0o002)
    try:
        out = run_tiny(tiny)
    finally:
        os.umask(old)
    for name in ("manifest.json", "annotations.json", "vocab.json", "images.bin", "images.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o664, name


def test_workers_default_to_the_available_cores(tiny, monkeypatch):
    import captioner.data.prepare as prepare_module

    seen = []
    monkeypatch.setattr(
        prepare_module, "ProcessPoolExecutor", lambda n: seen.append(n) or ThreadPoolExecutor(n)
    )
    monkeypatch.setattr(prepare_module, "available_cores", lambda: 1)
    run_tiny(tiny, workers=None)
    assert seen == []  # one core: no pool
    monkeypatch.setattr(prepare_module, "available_cores", lambda: 3)
    run_tiny(tiny, workers=None)
    assert seen == [3]
    assert prepare_module.available_cores() >= 1
