"""Benchmarks compare like with like: the reference and experiment decoders compute our Decoder's loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from common import Run, format_table  # noqa: E402
from reference_decoder import ReferenceDecoder  # noqa: E402
from train_speed import HoistedDecoder, LSTMCellDecoder, _clone_as, make_batch  # noqa: E402

from captioner.model.decoder import Decoder  # noqa: E402
from captioner.model.loss import caption_loss  # noqa: E402


@pytest.fixture
def decoder() -> Decoder:
    torch.manual_seed(0)
    return Decoder(vocab_size=40, encoder_dim=12, embed_dim=8, hidden_dim=10, attention_dim=6, dropout=0.0)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # max_len 9 but lengths <= 8 here for some seeds: the reference then runs fewer steps than T-1.
    return make_batch(batch=6, locations=5, encoder_dim=12, vocab=40, min_len=4, max_len=9, seed=1)


@pytest.mark.parametrize("project_once", [False, True])
def test_reference_decoder_gives_our_loss_and_gradients(decoder, batch, project_once):
    annotations, captions, lengths = batch
    ours, _ = caption_loss(decoder(annotations, captions), captions, smoothing=0.1)
    ref = ReferenceDecoder.from_decoder(decoder, project_once=project_once)
    out, order = ref(annotations, captions, lengths)
    theirs, _ = caption_loss(out, captions[order, : out.logits.shape[1] + 1], smoothing=0.1)
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ref.L_o.weight.grad, decoder.L_o.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        ref.decode_step.weight_hh.grad, decoder.lstm.weight_hh_l0.grad, rtol=1e-4, atol=1e-6
    )


def test_reference_decoder_runs_only_active_rows(decoder):
    annotations, captions, lengths = make_batch(4, 5, 12, 40, min_len=3, max_len=7, seed=0)
    lengths = torch.tensor([7, 3, 5, 4])
    out, order = ReferenceDecoder.from_decoder(decoder)(annotations, captions, lengths)
    assert order.tolist() == [0, 2, 3, 1]
    assert out.logits.shape[:2] == (4, 6)
    # rows past their caption's end stay zero: they were never computed
    assert out.logits[3, 2:].abs().sum() == 0 and out.logits[3, :2].abs().sum() > 0


@pytest.mark.parametrize("cls", [LSTMCellDecoder, HoistedDecoder])
def test_experiment_decoders_match_ours(decoder, batch, cls):
    annotations, captions, _ = batch
    twin = _clone_as(cls, decoder)
    expected, got = decoder(annotations, captions), twin(annotations, captions)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.alphas, expected.alphas, rtol=1e-5, atol=1e-6)


def test_run_record_has_provenance_and_merges_keys(tmp_path):
    out = tmp_path / "x.json"
    Run("demo").write({"rows": [1]}, key="cpu", out=out)
    Run("demo").write({"rows": [2]}, key="cuda", out=out)
    record = json.loads(out.read_text())
    assert set(record) == {"cpu", "cuda"}
    cpu = record["cpu"]
    for field in ("git_commit", "command", "date", "machine", "load_average", "rows"):
        assert field in cpu
    assert cpu["machine"]["threads"] == torch.get_num_threads()
    assert len(cpu["load_average"]["start"]) == 3


def test_format_table_aligns_columns():
    text = format_table([{"a": "x", "b": 1.23456}, {"a": "long", "b": 12345.6}], [("a", "A"), ("b", "B")])
    lines = text.splitlines()
    assert lines[0].split() == ["A", "B"]
    assert lines[2].split() == ["x", "1.23"] and lines[3].split() == ["long", "12346"]
    assert len({len(line) for line in lines}) == 1


def test_quality_table_takes_frozen_and_finetuned_rows_from_the_sweep(tmp_path):
    from quality import sweep_rows

    from captioner.errors import ConfigError

    def stats(*values: float) -> dict:
        return {"n": len(values), "mean": sum(values) / len(values), "sd": 0.1, "ci_low": 0.0, "ci_high": 1.0}

    # A sweeps/report.py JSON: per version, mean and CI over seeds of each metric.
    result = tmp_path / "pretrain_finetune_cpu.json"
    versions = {
        "v19": {
            "flags": "--pretrained --decoder_lr=4e-3",
            "metrics": {"test.bleu4": stats(37.0, 38.0), "test.object_f1": stats(0.3, 0.4)},
        },
        "v21": {
            "flags": "--pretrained --encoder_finetune",
            "metrics": {"test.bleu4": stats(24.0, 25.0), "test.object_f1": stats(0.4, 0.5)},
        },
    }
    result.write_text(json.dumps({"group": "pretrain_finetune", "scale": "cpu", "versions": versions}))
    rows = sweep_rows(str(result), ["v19", "v21"])
    assert [r["run"].split()[0] for r in rows] == ["v19", "v21"]
    assert "--encoder_finetune" in rows[1]["run"] and "--encoder_finetune" not in rows[0]["run"]
    assert "(mean of 2 seeds)" in rows[0]["run"]
    assert rows[0]["object_f1"] == pytest.approx(0.35) and rows[1]["bleu4"] == pytest.approx(24.5)
    assert all(r["split"] == "test" and 0 <= r["object_f1"] <= 1 and r["target"] for r in rows)
    with pytest.raises(ConfigError, match="v99"):
        sweep_rows(str(result), ["v99"])
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ConfigError, match="make report"):
        sweep_rows(str(tmp_path / "bad.json"), ["v19"])


@pytest.mark.slow  # four worker processes: ~30 s
def test_threads_benchmark_quick_run_writes_record(tmp_path):
    """bench/threads.py --quick: each setting alone and beside a busy process, the count auto chose."""
    out = tmp_path / "threads.json"
    subprocess.run(
        [sys.executable, str(BENCH / "threads.py"), "--quick", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    record = json.loads(out.read_text())
    rows = {r["setting"]: r for r in record["rows"]}
    assert set(rows) == {"threads=1", "auto"} and record["setup"]["default"] == "auto"
    assert rows["threads=1"]["threads_alone"] == rows["threads=1"]["threads_beside_busy"] == [1]
    assert all(r["alone"] > 0 and r["beside_busy"] > 0 for r in rows.values())


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_speed.py", "feature_cache.py", "cpu_scale_cost.py"])
def test_benchmark_quick_run_writes_record(tmp_path, script):
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--threads", "1", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    record = json.loads(out.read_text())
    assert record["rows"] and record["git_commit"] and record["machine"]["threads"] == 1
    if script == "cpu_scale_cost.py":  # the base, trained twice from one seed, is deterministic
        by_lever = {r["lever"]: r for r in record["rows"]}
        assert by_lever["base"]["weights_equal_base"] is True
        assert by_lever["batch_16"]["weights_equal_base"] is None  # other data: not comparable


def test_layer_probe_reads_separable_classes_and_not_noise():
    from probe_layers import probe_accuracy

    g = torch.Generator().manual_seed(0)
    labels = [["red", "blue", "green"][i % 3] for i in range(300)]
    centres = {"red": 0.0, "blue": 3.0, "green": -3.0}
    x = torch.randn(300, 8, generator=g) + torch.tensor([centres[c] for c in labels])[:, None]
    assert probe_accuracy(x[:200], labels[:200], x[200:], labels[200:]) > 0.95
    noise = torch.randn(300, 8, generator=g)
    assert probe_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.6


def test_tutorial_per_image_beam_finds_our_best_caption():
    """The tutorial's beam search (shrinking k) on our weights returns our batched beam's best caption."""
    from captioner.data.vocab import END_ID, PAD_ID
    from captioner.decode import beam_search

    torch.manual_seed(0)
    dec = Decoder(vocab_size=24, encoder_dim=8, embed_dim=12, hidden_dim=12, attention_dim=10, dropout=0.0)
    dec = dec.double().eval()
    with torch.no_grad():
        dec.embedding.weight.mul_(10.0)  # as test_decode: peaky words, captions of varied length
        dec.L_o.weight.mul_(4.0)
        dec.L_o.bias[END_ID] += 2.0
    ref = ReferenceDecoder.from_decoder(dec).double().eval()
    annotations = torch.rand(8, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = beam_search(dec, annotations, k=3, max_len=12)
    assert len(ours.lengths[:, 0].unique()) >= 2, "the fixture should give captions of varied length"
    for i in range(8):
        words, score = ref.beam_search_one(annotations[i : i + 1], k=3, max_len=12)
        expected = [w for w in ours.tokens[i, 0].tolist() if w != PAD_ID]
        assert words == expected and abs(score - float(ours.scores[i, 0])) < 1e-6


def test_quality_decode_names_map_to_decode_configs():
    from quality import decode_config

    from captioner.errors import ConfigError

    assert decode_config("greedy")["method"] == "greedy"
    assert (decode_config("beam5")["k"], decode_config("beam5")["length_norm"]) == (5, 0.0)
    assert (decode_config("beam3-ln1")["k"], decode_config("beam3-ln1")["length_norm"]) == (3, 1.0)
    with pytest.raises(ConfigError, match="beamK-lnX"):
        decode_config("beam")


def test_quality_caption_stats_show_repetition_and_length():
    from quality import caption_stats

    stats = caption_stats(["a red circle", "a red circle and a red circle", "two blue stars"])
    assert stats["repetition"] == pytest.approx(1 / 3)  # only the second repeats a trigram
    assert stats["length"] == pytest.approx((3 + 7 + 3) / 3)


def test_quality_train_minutes_sum_the_spooled_epoch_times_and_carried_rows_keep_their_commit(tmp_path):
    from quality import carried_rows, train_minutes

    from captioner.errors import ConfigError
    from captioner.tracking.spool import SPOOL_NAME

    run = tmp_path / "run"
    run.mkdir()
    assert train_minutes(run / "best.pt") is None  # logger=none: no spool
    lines = [
        {
            "seq": 0,
            "op": "metrics",
            "metrics": [["train.loss", 2.0, 1, 1], ["time.epoch_train_s", 90.0, 2, 10]],
        },
        {"op": "ack", "seq": 0},
        {"seq": 1, "op": "metrics", "metrics": [["time.epoch_train_s", 30.0, 3, 20]]},
    ]
    (run / SPOOL_NAME).write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert train_minutes(run / "best.pt") == 2.0

    old = tmp_path / "quality.json"
    record = {
        "git_commit": "abc123",
        "runs": [{"run": "mean"}, {"run": "soft"}],
        "rows": [{"run": "mean", "split": "test"}, {"run": "soft", "split": "test"}],
    }
    old.write_text(json.dumps(record))
    rows, sources = carried_rows(old, ["mean"])
    assert rows == [{"run": "mean", "split": "test", "measured_at": "abc123"}]
    assert sources == [{"run": "mean", "measured_at": "abc123"}]
    with pytest.raises(ConfigError, match="--carry blind: not in"):
        carried_rows(old, ["blind"])


def test_quality_errors_pairs_leftovers_into_wrong_shape_wrong_colour_left_out_and_extra():
    from quality_errors import breakdown

    def obj(color: str, shape: str) -> dict:
        return {"shape": shape, "color": color, "size": "large", "box": [0, 0, 1, 1], "center": [0.5, 0.5]}

    metas = {
        "a": {"objects": [obj("red", "circle")]},  # right
        "b": {"objects": [obj("red", "circle"), obj("blue", "square")]},  # square named a star
        "c": {"objects": [obj("green", "cross"), obj("blue", "star"), obj("red", "circle")]},
    }
    captions = {
        "a": "a large red circle".split(),
        "b": "a red circle and a blue star".split(),
        # a green cross named yellow, the blue star left out, an extra red circle
        "c": "a yellow cross and two red circles".split(),
    }
    got = breakdown(captions, metas)
    assert got["objects"] == 6
    assert got["errors"] == {"wrong shape": 1, "wrong colour": 1, "left out": 1, "extra": 1}
    assert got["wrong_scenes_by_objects"] == {1: "0 of 1", 2: "1 of 1", 3: "1 of 1"}
