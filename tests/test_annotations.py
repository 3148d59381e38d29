"""The annotations of a prepared folder: parsed once per process into shared arrays, equal to the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from test_dataset import make_prepared
from test_train import REPO, fast_overrides, shapes_data  # noqa: F401 - shapes_data is a fixture

from captioner.data import annotations as annotations_module
from captioner.data.annotations import load_annotations, write_annotations
from captioner.data.dataset import CaptionDataset, encode_captions
from captioner.data.records import ANNOTATIONS, ANNOTATIONS_INDEX, ImageRecord
from captioner.data.vocab import Vocab


def counting_parser(monkeypatch, what: str = "_read_annotations") -> list[Path]:
    """Forget every file read in this process, then record each read of an annotations file from now on
    (``_read_annotations``: from the file or its array sidecar; ``_parse_annotations``: JSON parses only)."""
    calls: list[Path] = []
    real = getattr(annotations_module, what)
    monkeypatch.setattr(annotations_module, "_LOADED", {})
    monkeypatch.setattr(annotations_module, what, lambda path, *a: calls.append(path) or real(path, *a))
    return calls


@pytest.mark.slow  # two short trainings' worth of start-up (~20 s idle, minutes on a busy machine)
@pytest.mark.parametrize(
    "encoder",
    [
        pytest.param([], id="frozen"),
        # fine-tuning stage4-conv5: the cache holds stage3's map, the tail trains on it
        pytest.param(["encoder.finetune=true", "encoder.finetune_from=stage4"], id="partial"),
    ],
)
def test_a_cache_built_ahead_is_what_training_reads_and_training_reads_annotations_once(
    encoder,
    shapes_data,  # noqa: F811 - a fixture
    tmp_path,
    monkeypatch,
    capsys,
):
    from captioner.cache import build_cache, main
    from captioner.config import register
    from captioner.data.features import FeatureCache
    from captioner.data.store import ImageStore
    from captioner.train.loop import train

    overrides = [*fast_overrides(shapes_data, tmp_path / "run"), "trainer.epochs=1", *encoder]
    folder = build_cache(overrides)
    assert "feature cache ready" in capsys.readouterr().out
    calls = counting_parser(monkeypatch)  # forgets what build_cache parsed: a new process, in effect
    monkeypatch.setattr(FeatureCache, "_compute", lambda *a: pytest.fail("training encoded images again"))
    for read in ("pil", "tensor"):  # no image is decoded: every step and every evaluation reads the cache
        monkeypatch.setattr(ImageStore, read, lambda *a: pytest.fail("training decoded an image"))
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    monkeypatch.setattr("sys.argv", ["train.py"])
    train(cfg, tmp_path / "run")
    assert len(calls) == 1, calls  # loop, setup, every split's dataset, loaders, cache, evaluation
    assert folder.is_dir()
    with pytest.raises(SystemExit) as exit_info:
        main([*overrides, "encoder.finetune=true", "encoder.finetune_from=null"])
    assert exit_info.value.code == 2 and "nothing to cache" in capsys.readouterr().err


def test_loaders_and_feature_cache_share_one_parse(tmp_path, monkeypatch):
    from test_features import KEY, CountingEncoder

    from captioner.data.features import FeatureCache
    from captioner.data.loaders import build_loaders

    vocab = make_prepared(tmp_path, {"train": 3, "val": 2, "test": 1})
    calls = counting_parser(monkeypatch)
    splits = load_annotations(tmp_path).splits
    reader = FeatureCache(tmp_path, KEY, image_size=16).ensure(CountingEncoder(), splits, progress=False)
    off = {"hflip": 0.0, "color_jitter": 0.0, "crop_scale_min": 1.0}
    train, evals = build_loaders(tmp_path, vocab, 2, image_size=16, features=reader, augment=off)
    build_loaders(tmp_path, vocab, 2, image_size=16)
    assert sorted(evals) == ["test", "val"] and next(iter(train))["features"].shape[0] == 2
    assert len(calls) == 1


def test_a_rewritten_file_is_read_again(tmp_path, monkeypatch):
    calls = counting_parser(monkeypatch)
    make_prepared(tmp_path, {"train": 2})
    load_annotations(tmp_path)
    load_annotations(tmp_path)
    assert len(calls) == 1
    make_prepared(tmp_path, {"train": 3})
    assert len(load_annotations(tmp_path)) == 3 and len(calls) == 2


def test_records_round_trip_and_the_file_is_one_json_dumps(tmp_path):
    make_prepared(tmp_path, {"train": 2, "val": 1})
    records = [
        ImageRecord(
            "b", "train", "img/b.jpg", ["Ünïcode café", "x"], [["ünïcode", "café"], ["x"]], {"k": [1]}
        ),
        ImageRecord("a", "val", "a", ["a b"], [["a", "b"]]),
    ]
    write_annotations(tmp_path, records)
    text = (tmp_path / ANNOTATIONS).read_text()
    assert text == json.dumps({"images": [vars(r) for r in records]})  # what json.dumps(asdict) gave
    ann = load_annotations(tmp_path)
    assert list(ann.values()) == records and ann["a"] == records[1] and "c" not in ann
    assert ann.splits == ["train", "val"] and ann.rows("val").tolist() == [1]


def test_vectorised_encoding_equals_vocab_encode(tmp_path):
    vocab = make_prepared(tmp_path, {"train": 6})
    ann = load_annotations(tmp_path)
    captions = np.arange(len(ann.caption_starts) - 1)[::-1]
    for max_len in (1, 3, 30):
        ids, starts = encode_captions(ann, captions, Vocab(vocab.itos[:6]), max_len)
        expected = [Vocab(vocab.itos[:6]).encode(ann.caption_tokens(c), max_len) for c in captions]
        assert [ids[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])] == expected
    ds = CaptionDataset(tmp_path, "train", vocab)
    assert [ds.records[i].tokens[j] for i, j in ds.pairs] == [ann.caption_tokens(c) for c in ds.captions]


def test_starts_read_the_array_sidecar_and_a_changed_file_or_read_only_folder_is_parsed(
    tmp_path, monkeypatch
):
    make_prepared(tmp_path, {"train": 3, "val": 2})
    records = [
        ImageRecord(
            "b", "train", "img/b.jpg", ["Ünïcode café"], [["ünïcode", "café"]], {"objects": [[1, 2]]}
        ),
        ImageRecord("a", "val", "a", ["a b", "c"], [["a", "b"], ["c"]]),
    ]
    write_annotations(tmp_path, records)  # writes the sidecar too
    sidecar = tmp_path / ANNOTATIONS_INDEX
    parses = counting_parser(monkeypatch, "_parse_annotations")
    ann = load_annotations(tmp_path)
    assert list(ann.values()) == records and sidecar.exists() and parses == []
    assert ann.splits == ["train", "val"] and ann["a"] == records[1] and ann.rows("val").tolist() == [1]

    def new_process():
        monkeypatch.setattr(annotations_module, "_LOADED", {})

    # another tool rewrites the file: the sidecar no longer matches, so it is parsed (and the sidecar renewed)
    (tmp_path / ANNOTATIONS).write_text(json.dumps({"images": [vars(records[1])]}))
    assert list(load_annotations(tmp_path).values()) == records[1:] and len(parses) == 1
    new_process()
    assert list(load_annotations(tmp_path).values()) == records[1:] and len(parses) == 1
    sidecar.write_bytes(b"not a zip")  # damaged: parsed again, never an error
    new_process()
    assert list(load_annotations(tmp_path).values()) == records[1:] and len(parses) == 2
    sidecar.unlink()
    monkeypatch.setattr(annotations_module, "open_atomic", lambda path: open("/nonexistent/x", "wb"))
    new_process()
    assert list(load_annotations(tmp_path).values()) == records[1:]  # a read-only folder still loads
    assert not sidecar.exists() and len(parses) == 3


def test_cache_cli_composes_sweep_configs_like_train_py():
    from hydra.core.hydra_config import HydraConfig

    from captioner.cache import compose_train_config

    cfg = compose_train_config(["sweep=optim_dropout", "scale=cpu", "version=v15"])
    assert cfg.logger.experiment == "sweep-optim_dropout-cpu"  # ${hydra:runtime.choices.sweep}, resolved
    assert "hydra" not in cfg
    assert not HydraConfig.initialized()  # nothing leaks into later code (run names read Hydra's choices)
