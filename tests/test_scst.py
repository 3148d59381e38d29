"""Self-critical sequence training: the CIDEr-D cache, the reward mix, learning on a tiny set, config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from captioner.data.records import ImageRecord
from captioner.data.vocab import SPECIALS, Vocab
from captioner.errors import ConfigError
from captioner.metrics import CiderD, bleu, cider_d
from captioner.model.captioner import Captioner
from captioner.model.decoder import Decoder
from captioner.train.scst import Reward, SelfCritical

REFERENCES = {
    "img0": ["a red circle", "one red circle", "a red circle here"],
    "img1": ["a blue square", "one blue square", "a blue square here"],
    "img2": ["a green star", "one green star", "a green star here"],
    "img3": ["two red squares", "two red squares here", "a pair of red squares"],
}


def records() -> dict[str, ImageRecord]:
    return {
        i: ImageRecord(i, "train", f"{i}.png", refs, [r.split() for r in refs])
        for i, refs in REFERENCES.items()
    }


def scst_config(**overrides: object) -> OmegaConf:
    base = {"name": "scst", "baseline": "mean", "samples": 5, "max_len": 6, "reward": {"cider_d": 1.0}}
    return OmegaConf.create({**base, **overrides})


def test_cached_cider_d_equals_cider_d_on_its_own_corpus() -> None:
    refs = {i: [r.split() for r in v] for i, v in REFERENCES.items()}
    hyps = [["a", "red", "circle"], ["a", "red", "square"], ["green", "star"], ["two", "red", "squares"]]
    ids = list(refs)
    cached = CiderD(refs).score(hyps, ids)
    assert cached == cider_d(hyps, [refs[i] for i in ids]).per_caption["cider_d"]
    # The idf is the corpus's, whatever the batch: one image scored alone keeps its score.
    assert CiderD(refs).score(hyps[:1], ids[:1]) == cached[:1]


def test_reward_mixes_metrics_on_coco_scale() -> None:
    captions, ids = [["a", "red", "circle"], ["a", "blue", "star"]], ["img0", "img1"]
    refs = [[r.split() for r in REFERENCES[i]] for i in ids]
    mixed = Reward({"cider_d": 1.0, "bleu4": 0.5}, records())(captions, ids)
    expected = (
        np.asarray(CiderD({i: [r.split() for r in v] for i, v in REFERENCES.items()}).score(captions, ids))
        / 100
        + 0.5 * np.asarray(bleu(captions, refs).per_caption["bleu4"]) / 100
    )
    assert np.allclose(mixed, expected)
    with pytest.raises(ConfigError, match="object_f1 needs the shapes ground truth"):
        Reward({"object_f1": 1.0}, records())


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_scst_raises_the_mean_training_reward(baseline: str) -> None:
    vocab = Vocab([*SPECIALS, *sorted({w for refs in REFERENCES.values() for r in refs for w in r.split()})])
    torch.manual_seed(0)
    decoder = Decoder(len(vocab), 16, 16, 32, 16, dropout=0.0)
    model = Captioner(None, decoder).train()
    scst = SelfCritical(scst_config(baseline=baseline), model, vocab, records())
    features = torch.randn(4, 2, 2, 16)  # one distinct "image" per reference set
    batch = {"image_ids": list(REFERENCES)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rewards = []
    for _ in range(60):
        loss, parts = scst(model, features, batch, 1.0, True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(float(parts["reward"]))
        assert {"reward", "baseline", "entropy", "sample_length"} <= set(parts)
    assert np.mean(rewards[-10:]) > np.mean(rewards[:5]) + 0.3, rewards  # CIDEr-D 0.3 = our 30


def test_bad_scst_settings_are_one_line_errors() -> None:
    from captioner.train.scst import check_scst

    with pytest.raises(ConfigError, match="objective.baseline='best'"):
        check_scst(scst_config(baseline="best"))
    with pytest.raises(ConfigError, match="samples=1"):
        check_scst(scst_config(samples=1))
    with pytest.raises(ConfigError, match="unknown terms"):
        check_scst(scst_config(reward={"meteor": 1.0}))
    with pytest.raises(ConfigError, match="all 0"):
        check_scst(scst_config(reward={"cider_d": 0.0}))


def test_scst_without_init_from_is_one_line(tmp_path: Path) -> None:
    from test_train import assert_user_error, run_train

    proc = run_train(tmp_path / "data", tmp_path / "run", "objective=scst")
    assert_user_error(proc, "objective=scst needs", "trainer.init_from=")


def test_missing_init_from_file_is_one_line(tmp_path: Path) -> None:
    from captioner.train.objective import check_objective

    cfg = OmegaConf.create({"objective": scst_config(), "trainer": {"init_from": str(tmp_path / "no.pt")}})
    with pytest.raises(ConfigError, match=r"trainer.init_from=.*no.pt: file not found"):
        check_objective(cfg, distributed=False)


def test_init_from_an_incompatible_checkpoint_is_one_line(tmp_path: Path) -> None:
    from captioner.errors import CheckpointError
    from captioner.runtime import checkpoint as ckpt
    from captioner.train.objective import init_from, load_init_from

    vocab = Vocab([*SPECIALS, "a"])
    model = Captioner(None, Decoder(len(vocab), 8, 8, 8, 8))
    path = tmp_path / "xe.pt"
    saved = {"decoder": {"attention": "hard"}, "encoder": {}}
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "vocab": vocab.itos, "config": saved})
    cfg = OmegaConf.create({"decoder": {"attention": "soft"}, "encoder": {}})
    with pytest.raises(CheckpointError, match=r"decoder.attention: hard \(saved\) vs soft \(given\)"):
        load_init_from(str(path), vocab, cfg)
    with pytest.raises(CheckpointError, match="vocabulary differs"):
        load_init_from(str(path), Vocab([*SPECIALS, "b"]), cfg)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a captioner checkpoint"):
        load_init_from(str(tmp_path / "junk.pt"), vocab, cfg)
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "vocab": vocab.itos, "config": {}})
    init_from(model, load_init_from(str(path), vocab, cfg), str(path))  # same weights, same config: loads
