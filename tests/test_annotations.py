"""The annotations of a prepared folder: parsed once per process into shared arrays, equal to the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from test_dataset import make_prepared
from test_train import REPO, fast_overrides, shapes_data  # noqa: F401 - shapes_data is a fixture

from captioner.data import records as records_module
from captioner.data.dataset import CaptionDataset, encode_captions
from captioner.data.records import ANNOTATIONS, ImageRecord, load_annotations, write_annotations
from captioner.data.vocab import Vocab


def counting_parser(monkeypatch) -> list[Path]:
    """Forget every parsed file, then record each parse of an annotations file from now on."""
    calls: list[Path] = []
    real = records_module._parse_annotations
    monkeypatch.setattr(records_module, "_LOADED", {})
    monkeypatch.setattr(records_module, "_parse_annotations", lambda path: calls.append(path) or real(path))
    return calls


def test_a_training_start_reads_the_annotations_once(shapes_data, tmp_path, monkeypatch):  # noqa: F811
    from captioner.config import register
    from captioner.train.loop import train

    register()
    calls = counting_parser(monkeypatch)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*fast_overrides(shapes_data, tmp_path / "run"), "trainer.epochs=1"]
        )
    monkeypatch.setattr("sys.argv", ["train.py"])
    train(cfg, tmp_path / "run")
    assert len(calls) == 1, calls  # loop, setup, every split's dataset, loaders, cache, evaluation


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
