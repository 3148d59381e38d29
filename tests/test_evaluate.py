"""evaluate.py and captioner.evaluation on a tiny trained checkpoint: table, JSON files, MLflow, calibration, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TinyRun, run_script

from captioner.errors import CheckpointError, ConfigError
from captioner.evaluation.calibrate import calibrate_checkpoint
from captioner.evaluation.checkpoint import (
    check_vocab,
    evaluate_checkpoint,
    resolve_data_root,
    resolve_splits,
)
from captioner.metrics import meteor_unavailable
from captioner.model.load import load_captioner

TEXT_COLUMNS = ["bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"]
GROUNDING_COLUMNS = ["object_precision", "object_recall", "object_f1", "exact_scene", "pointing_accuracy"]
GREEDY = {"method": "greedy", "max_len": 12}
FAST = ("bleu", "rouge_l", "cider_d")  # METEOR starts a JVM (~10 s): scored once, in a slow test


def test_evaluate_cli_scores_test_splits_and_writes_json(tiny_run: TinyRun, tmp_path: Path):
    proc = run_script(
        "evaluate.py",
        "checkpoint=run/best.pt",
        "split=all",
        "decode=beam",
        "decode.k=2",
        "decode.max_len=12",
        "metrics=[bleu,rouge_l,cider_d]",
        f"out={tmp_path / 'eval'}",
        "logger=none",
        cwd=tiny_run.cwd,
    )
    header, *rows = [line for line in proc.stdout.splitlines() if line.startswith(("split", "test", "val"))]
    columns = header.split()
    expected = TEXT_COLUMNS + GROUNDING_COLUMNS + ["attention_mass"]
    assert set(expected) <= set(columns)
    assert {r.split()[0] for r in rows} == {"val", "test", "test_novel"}
    assert all(len(r.split()) == len(columns) for r in rows)

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"test", "test_novel"} <= set(metrics)
    assert set(expected) <= set(metrics["test"])
    for split in ("test", "test_novel"):
        coco = json.loads((tmp_path / "eval" / f"captions_{split}.json").read_text())
        assert len(coco) == 8 and all(set(c) == {"image_id", "caption"} for c in coco)
        assert all(c["image_id"].startswith(f"shapes_{split}_") for c in coco)


@pytest.mark.slow  # METEOR starts a JVM and a fresh MLflow SQLite store migrates: ~25 s
def test_evaluate_default_metrics_include_meteor_and_log_an_mlflow_run(tiny_run: TinyRun, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    proc = run_script(
        "evaluate.py",
        "checkpoint=run/best.pt",
        "decode=greedy",
        f"out={tmp_path / 'eval'}",
        f"logger.tracking_uri=sqlite:///{db}",
        cwd=tiny_run.cwd,
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    if meteor_unavailable() is None:
        header = next(line for line in proc.stdout.splitlines() if line.startswith("split"))
        assert "meteor" in header.split() and "meteor" in metrics["test"]
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("shapes_smoke")  # the checkpoint's experiment
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["evaluation"] == "true"
    assert run.data.params["checkpoint"] == "run/best.pt"
    assert run.data.params["decode.method"] == "greedy"
    assert run.data.metrics["test.bleu1"] == pytest.approx(metrics["test"]["bleu1"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "captions_test.json"}


def test_evaluate_in_process_matches_reference_split_sizes(tiny_run: TinyRun):
    loaded = load_captioner(tiny_run.checkpoint)
    root = resolve_data_root(loaded, tiny_run.data_root)
    assert resolve_splits(root, "all") == ["test", "test_novel", "val"]
    assert resolve_splits(root, "test") == ["test"]
    results = evaluate_checkpoint(
        loaded, root, ["test"], GREEDY, torch.device("cpu"), batch_size=3, metrics=FAST
    )
    assert len(results["test"].captions) == 8
    assert 0.0 <= results["test"].metrics["bleu1"] <= 100.0


def test_unknown_split_is_one_line_error(tiny_run: TinyRun):
    with pytest.raises(
        ConfigError, match=r"split='tset' is not in .* \(it has test, test_novel, train, val\)"
    ):
        resolve_splits(tiny_run.data_root, "tset")


def test_calibration_lowers_val_nll_and_is_stored(tiny_run: TinyRun, tmp_path: Path):
    checkpoint = tmp_path / "best.pt"
    shutil.copy(tiny_run.checkpoint, checkpoint)
    loaded = load_captioner(checkpoint)
    assert loaded.temperature is None
    t, before, after = calibrate_checkpoint(loaded, tiny_run.data_root, torch.device("cpu"))
    assert t > 0 and after <= before + 1e-6
    again = load_captioner(checkpoint)
    assert again.temperature == pytest.approx(t)
    calibrated = {**GREEDY, "calibrated": True}
    # Greedy is temperature-invariant: a calibrated decode gives the same captions.
    plain = evaluate_checkpoint(
        again, tiny_run.data_root, ["val"], GREEDY, torch.device("cpu"), metrics=FAST
    )["val"]
    scaled = evaluate_checkpoint(
        again, tiny_run.data_root, ["val"], calibrated, torch.device("cpu"), metrics=FAST
    )["val"]
    assert scaled.captions == plain.captions


def test_checkpoint_is_portable(tiny_run: TinyRun):
    state = torch.load(tiny_run.checkpoint, weights_only=True)

    def strings(obj):
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                yield from strings(v)

    absolute = [s for s in strings(state) if s.startswith("/")]
    assert not absolute, f"absolute paths inside the checkpoint: {absolute}"
    assert state["config"]["data"]["root"] == "data/shapes_smoke"


def _vocab_mismatch_data(tiny_run: TinyRun, tmp_path: Path) -> Path:
    root = tmp_path / "other"
    shutil.copytree(tiny_run.data_root, root, ignore=shutil.ignore_patterns("features"))
    vocab = json.loads((root / "vocab.json").read_text())
    vocab["itos"].append("zebra")
    (root / "vocab.json").write_text(json.dumps(vocab))
    return root


def test_vocabulary_mismatch_is_one_line_error(tiny_run: TinyRun, tmp_path: Path):
    loaded = load_captioner(tiny_run.checkpoint)
    check_vocab(loaded, tiny_run.data_root)  # the training data matches
    root = _vocab_mismatch_data(tiny_run, tmp_path)
    n = len(loaded.vocab)
    with pytest.raises(
        CheckpointError, match=rf"checkpoint vocabulary \({n} words\) does not match .*\({n + 1} words\)"
    ):
        check_vocab(loaded, root)
    proc = run_script(
        "evaluate.py",
        "checkpoint=run/best.pt",
        f"data_root={root}",
        "logger=none",
        cwd=tiny_run.cwd,
        check=False,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert (
        line.startswith("error: checkpoint vocabulary")
        and "evaluate with the data the model was trained on" in line
    )


def _other_files(tiny_run: TinyRun, tmp_path: Path) -> dict[str, Path]:
    import torchvision

    files = {
        "plain dict": tmp_path / "plain.pt",
        "torchvision": tmp_path / "resnet.pth",
        "text": tmp_path / "notes.pt",
    }
    torch.save({"a": 1}, files["plain dict"])
    torch.save(torchvision.models.squeezenet1_1().state_dict(), files["torchvision"])
    files["text"].write_text("not a checkpoint\n")
    data = tiny_run.checkpoint.read_bytes()
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


def test_checkpoints_of_other_formats_are_one_line_errors(tiny_run: TinyRun, tmp_path: Path):
    for kind, path in _other_files(tiny_run, tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_captioner(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message, kind
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_captioner(tmp_path / "missing.pt")


def test_calibrated_decode_without_fitted_temperature_names_the_fix(tiny_run: TinyRun):
    loaded = load_captioner(tiny_run.checkpoint)
    with pytest.raises(
        ConfigError, match=r"no fitted temperature; run `python evaluate.py .* calibrate=true`"
    ):
        evaluate_checkpoint(
            loaded, tiny_run.data_root, ["val"], {**GREEDY, "calibrated": True}, torch.device("cpu")
        )
