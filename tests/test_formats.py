"""Caption-format parsers: what each reads, which quirks it reports, and how malformed input fails."""

import json
from collections import Counter
from pathlib import Path

import pytest

from captioner.data.formats import parse, read_splits
from captioner.errors import ConfigError, DataError

FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
needs_flickr8k = pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(), reason=f"Flickr8k text release not found at {FLICKR8K}"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flickr_lists(folder: Path, train=("a.jpg",), dev=("b.jpg",), test=("c.jpg",)) -> Path:
    write(folder / "Flickr_8k.trainImages.txt", "\n".join(train) + "\n")
    write(folder / "Flickr_8k.devImages.txt", "\n".join(dev) + "\n")
    write(folder / "Flickr_8k.testImages.txt", "\n".join(test) + "\n")
    return folder


def one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_flickr8k_token_file_splits_unsplit_and_malformed_key(tmp_path):
    write(
        tmp_path / "Flickr8k.token.txt",
        "a.jpg#0\tA dog runs .\n"
        "a.jpg#1\tA brown dog .\n"
        "b.jpg.1#0\tpeople waiting\n"  # Flickr8k's malformed key: belongs to b.jpg
        "b.jpg#1\tPeople on a platform .\n"
        "c.jpg#0\tA cat .\n"
        "z.jpg#0\tIn no split .\n",
    )
    flickr_lists(tmp_path)
    parsed = parse("flickr8k", tmp_path)
    by_file = Counter((c.file, c.split) for c in parsed.captions)
    assert by_file == {("a.jpg", "train"): 2, ("b.jpg", "val"): 2, ("c.jpg", "test"): 1, ("z.jpg", None): 1}
    assert len(parsed.problems) == 1 and "b.jpg.1" in parsed.problems[0] and "line 3" in parsed.problems[0]
    assert parsed.captions[0].caption == "A dog runs ."  # file order and raw text kept


def test_token_line_without_tab_names_file_and_line(tmp_path):
    write(tmp_path / "Flickr8k.token.txt", "a.jpg#0\tfine\na.jpg#1 no tab here\n")
    flickr_lists(tmp_path)
    with pytest.raises(DataError) as err:
        parse("flickr8k", tmp_path)
    message = one_line_error(err)
    assert "Flickr8k.token.txt line 2" in message and "fix or delete" in message


def test_flickr30k_token_file_with_karpathy_splits(tmp_path):
    token = write(
        tmp_path / "results_20130124.token", "1.jpg#0\tA man .\n2.jpg#0\tA woman .\n3.jpg#0\tA kid .\n"
    )
    karpathy = {
        "images": [
            {"filename": "1.jpg", "split": "restval", "sentences": []},
            {"filename": "2.jpg", "split": "test", "sentences": []},
        ]
    }
    splits = write(tmp_path / "dataset_flickr30k.json", json.dumps(karpathy))
    parsed = parse("flickr30k", token, splits)
    assert [(c.file, c.split) for c in parsed.captions] == [
        ("1.jpg", "train"),
        ("2.jpg", "test"),
        ("3.jpg", None),
    ]


def test_karpathy_json_restval_merges_into_train_and_filepath_joins(tmp_path):
    obj = {
        "images": [
            {"filepath": "val2014", "filename": "x.jpg", "split": "restval", "sentences": [{"raw": "One ."}]},
            {"filename": "y.jpg", "split": "val", "sentences": [{"raw": "Two ."}, {"raw": "Three ."}]},
        ]
    }
    parsed = parse("karpathy", write(tmp_path / "d.json", json.dumps(obj)))
    assert [(c.file, c.split, c.caption) for c in parsed.captions] == [
        ("val2014/x.jpg", "train", "One ."),
        ("y.jpg", "val", "Two ."),
        ("y.jpg", "val", "Three ."),
    ]


def test_karpathy_malformed_json_names_line(tmp_path):
    path = write(tmp_path / "d.json", '{"images": [\n  {"filename": "x.jpg",,}\n]}')
    with pytest.raises(DataError) as err:
        parse("karpathy", path)
    assert "d.json line 2" in one_line_error(err)


def test_karpathy_unknown_split_lists_valid_ones(tmp_path):
    path = write(
        tmp_path / "d.json",
        json.dumps({"images": [{"filename": "x.jpg", "split": "holdout", "sentences": []}]}),
    )
    with pytest.raises(DataError, match="unknown split 'holdout'.*restval"):
        parse("karpathy", path)


def test_csv_quoted_commas_and_split_files(tmp_path):
    path = write(tmp_path / "captions.txt", 'image,caption\na.jpg,"A dog, running ."\nc.jpg,A cat .\n\n')
    parsed = parse("csv", path, flickr_lists(tmp_path / "lists"))
    assert [(c.file, c.split, c.caption) for c in parsed.captions] == [
        ("a.jpg", "train", "A dog, running ."),
        ("c.jpg", "test", "A cat ."),
    ]
    assert any("b.jpg" in p for p in parsed.problems)  # listed in a split, but no captions: reported


def test_csv_split_column_and_bad_rows(tmp_path):
    parsed = parse(
        "csv", write(tmp_path / "c.csv", "image,caption,split\na.jpg,Hi .,train\nb.jpg,Yo .,dev\n")
    )
    assert [(c.file, c.split) for c in parsed.captions] == [("a.jpg", "train"), ("b.jpg", "val")]
    with pytest.raises(DataError, match="line 1: header"):
        parse("csv", write(tmp_path / "h.csv", "file,text\na.jpg,Hi\n"))
    with pytest.raises(DataError, match="line 3: expected 2 columns"):
        parse("csv", write(tmp_path / "r.csv", "image,caption\na.jpg,Hi\nb.jpg,Hi,extra\n"))


def test_coco_folder_default_splits_and_karpathy_splits(tmp_path):
    ann = tmp_path / "annotations"
    for subdir, image_id in (("train2014", 1), ("val2014", 2)):
        obj = {
            "images": [{"id": image_id, "file_name": f"COCO_{subdir}_{image_id}.jpg"}],
            "annotations": [{"image_id": image_id, "id": 10 + image_id, "caption": f"Caption {image_id} ."}],
        }
        write(ann / f"captions_{subdir}.json", json.dumps(obj))
    parsed = parse("coco", ann)
    assert [(c.file, c.split) for c in parsed.captions] == [
        ("train2014/COCO_train2014_1.jpg", "train"),
        ("val2014/COCO_val2014_2.jpg", "val"),
    ]
    assert any("no data.prepare.splits" in p for p in parsed.problems)
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "split": "test", "sentences": []}
        ]
    }
    parsed = parse("coco", ann, write(tmp_path / "dataset_coco.json", json.dumps(karpathy)))
    assert [(c.file, c.split) for c in parsed.captions] == [
        ("train2014/COCO_train2014_1.jpg", None),
        ("val2014/COCO_val2014_2.jpg", "test"),
    ]


def test_coco_annotation_of_unknown_image_fails(tmp_path):
    obj = {"images": [], "annotations": [{"image_id": 7, "caption": "x"}]}
    with pytest.raises(DataError, match=r"annotations\[0\]"):
        parse("coco", write(tmp_path / "captions_train2014.json", json.dumps(obj)))


def test_jsonl_reads_entries_and_reports_line_numbers(tmp_path):
    lines = [
        {"image": "p/1.jpg", "captions": ["One .", "Uno ."], "split": "train"},
        {"image": "p/2.jpg", "captions": [], "split": "test"},  # no captions: prepare's on_bad decides
        {"image": "p/3.jpg", "captions": ["Three ."]},  # no split: unsplit
    ]
    path = write(tmp_path / "c.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    parsed = parse("jsonl", path)
    assert [(c.file, c.split, c.caption) for c in parsed.captions] == [
        ("p/1.jpg", "train", "One ."),
        ("p/1.jpg", "train", "Uno ."),
        ("p/2.jpg", "test", None),
        ("p/3.jpg", None, "Three ."),
    ]
    assert parsed.captions[2].where.endswith("c.jsonl line 2")
    with pytest.raises(DataError) as err:
        parse(
            "jsonl",
            write(tmp_path / "bad.jsonl", '{"image": "a.jpg", "captions": ["x"]}\n{"image": "b.jpg", \n'),
        )
    assert "bad.jsonl line 2: malformed JSON" in one_line_error(err)
    with pytest.raises(DataError, match='line 1: "captions" must be a list'):
        parse("jsonl", write(tmp_path / "c2.jsonl", '{"image": "a.jpg", "captions": "one string"}\n'))


def test_read_splits_sources_and_conflicts(tmp_path):
    assert read_splits(flickr_lists(tmp_path / "f")) == {"a.jpg": "train", "b.jpg": "val", "c.jpg": "test"}
    plain = tmp_path / "plain"
    for split in ("train", "val", "test"):
        write(plain / f"{split}.txt", f"{split}.jpg\n")
    assert read_splits(plain) == {"train.jpg": "train", "val.jpg": "val", "test.jpg": "test"}
    assert read_splits(write(tmp_path / "s.json", '{"train": ["a.jpg"], "dev": ["b.jpg"]}')) == {
        "a.jpg": "train",
        "b.jpg": "val",
    }
    with pytest.raises(DataError, match="already in split 'train'"):
        read_splits(flickr_lists(tmp_path / "dup", train=("a.jpg",), dev=("a.jpg",)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has neither"):
        read_splits(tmp_path / "empty")
    with pytest.raises(DataError, match="split file not found"):
        read_splits(tmp_path / "nowhere.json")


def test_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="prepare.format='tsv'"):
        parse("tsv", "x")


@needs_flickr8k
def test_real_flickr8k_release_counts():
    parsed = parse("flickr8k", FLICKR8K)
    images = Counter(split for _, split in {(c.file, c.split) for c in parsed.captions})
    assert images == {"train": 6000, "val": 1000, "test": 1000, None: 92}
    assert Counter(c.split for c in parsed.captions) == {"train": 30000, "val": 5000, "test": 5000, None: 460}
    assert any("2258277193_586949ec62.jpg.1" in p for p in parsed.problems)
