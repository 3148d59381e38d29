"""The README is a user's document: every `python train.py ...` line in it composes, and it stays short."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from captioner.cli import CONF_DIR
from captioner.config import register

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def train_lines() -> list[str]:
    """Each `python train.py ...` command in the README's code blocks, without its comment."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("python train.py")]


def test_readme_is_at_most_12000_characters() -> None:
    assert len(README) <= 12_000, f"README.md is {len(README)} characters; move detail to docs/"


@pytest.mark.parametrize("line", train_lines())
def test_every_train_command_in_the_readme_composes(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python train.py <overrides> --cfg job` for each line (a sweep's -m dropped: the same config)."""
    overrides = [a for a in shlex.split(line)[2:] if a not in ("-m", "--multirun", "--cfg", "job")]
    monkeypatch.chdir(REPO)  # the sweep groups are on the search path from the repo root
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert cfg.trainer.epochs > 0


def test_the_readme_names_the_card_command() -> None:
    assert "python train.py encoder=shufflenet tf=inv_sigmoid" in train_lines()
