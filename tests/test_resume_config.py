"""What a resume runs with: the checkpoint's config, plus only the runtime keys the command line gave
(captioner.train.resume); the end-to-end resumes are in test_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from captioner.config import register
from captioner.errors import ConfigError
from captioner.runtime.checkpoint import save_checkpoint
from captioner.train.resume import resume_run

REPO = Path(__file__).resolve().parents[1]


def composed(*overrides: str) -> DictConfig:
    """The config ``python train.py <overrides>`` trains with."""
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder whose last.pt was trained with tf=linear for 3 epochs."""
    saved = OmegaConf.to_container(composed("tf=linear", "trainer.epochs=3", "logger=none"), resolve=True)
    progress = {
        "epoch": 2,
        "step": 20,
        "best": None,
        "best_epoch": None,
        "bad_validations": 0,
        "run_id": None,
    }
    save_checkpoint(tmp_path / "last.pt", {"config": saved, "progress": progress, "vocab": []})
    return tmp_path


def test_a_bare_resume_runs_the_saved_config_not_the_defaults(run: Path) -> None:
    cfg = composed(f"trainer.resume={run}")  # the defaults: tf=inv_sigmoid, 10 epochs, MLflow on
    resumed = resume_run(cfg, given=lambda key: key == "trainer.resume")
    assert resumed.cfg.tf.name == "linear" and resumed.cfg.tf.epochs == 3 and resumed.cfg.trainer.epochs == 3
    assert resumed.cfg.logger.enabled is False
    assert resumed.cfg.trainer.resume == str(run) and resumed.run_dir == run
    assert resumed.overrides == [] and resumed.finished_metrics() is None
    assert resumed.status_line(finished=False) == f"resuming {run} from last.pt (epoch 2/3)"


def test_more_epochs_are_applied_with_what_follows_them_and_said(run: Path) -> None:
    cfg = composed(f"trainer.resume={run}", "trainer.epochs=5", "trainer.threads=1")
    resumed = resume_run(cfg, given=lambda key: key in ("trainer.epochs", "trainer.threads"))
    assert resumed.cfg.trainer.epochs == 5 and resumed.cfg.tf.epochs == 5
    assert resumed.cfg.trainer.threads == "1"
    assert resumed.overrides == [
        "resume: trainer.epochs 3 -> 5 (from the command line)",
        "resume: trainer.threads auto -> 1 (from the command line)",
        "resume: tf.epochs 3.0 -> 5.0 (follows trainer.epochs)",
    ]


def test_any_other_given_difference_is_refused_in_one_line(run: Path) -> None:
    cfg = composed(f"trainer.resume={run}", "trainer.epochs=2", "trainer.seed=7", "tf=linear")
    with pytest.raises(ConfigError) as err:
        resume_run(cfg, given=lambda key: key in ("trainer.epochs", "trainer.seed") or key.startswith("tf."))
    message = str(err.value)
    assert "\n" not in message
    assert "(trainer.epochs: 3 (saved) vs 2 (given), trainer.seed: 0 (saved) vs 7 (given));" in message
    assert (
        "may change only trainer.epochs, trainer.device, trainer.threads, logger.* (epochs upwards)"
        in message
    )


@pytest.mark.parametrize("start", ["trainer.resume", "trainer.init_from"])
def test_a_checkpoint_trained_on_another_vocabulary_fails_before_the_data_is_built(
    start: str, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from captioner.data.vocab import SPECIALS, Vocab
    from captioner.errors import CheckpointError
    from captioner.train import loop

    data_root = tmp_path / "data"
    data_root.mkdir()
    Vocab([*SPECIALS, "circle"]).save(data_root / "vocab.json")  # the checkpoint's vocabulary is empty
    monkeypatch.setattr(loop, "ensure_prepared", lambda *a: data_root)
    monkeypatch.setattr(loop, "build_data", lambda *a: pytest.fail("the data was built before the check"))
    source = run if start == "trainer.resume" else run / "last.pt"
    cfg = composed("tf=linear", "trainer.epochs=3", "logger=none", "trainer.device=cpu", f"{start}={source}")
    with pytest.raises(CheckpointError, match=f"{start}=.*vocabulary differs"):
        loop.train(cfg, tmp_path / "new_run")
