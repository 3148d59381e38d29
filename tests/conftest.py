"""Shared fixtures: one tiny trained checkpoint per session (real train.py, shapes smoke data, seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tests share two CPU cores: one thread each avoids oversubscription (10x slower here otherwise).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # CI clones the repo with ../shared beside it


# One epoch on 40 shapes images with a small frozen encoder, no MLflow: the smallest real training.
TINY_TRAINING = (
    "data=shapes_smoke",
    "trainer=smoke",
    "trainer.epochs=1",
    "trainer.figures=0",
    "logger=none",
    "encoder=mobilenet_v3_small",
    "encoder.pretrained=false",
    "decoder=small",
    "data.prepare.n_train=40",
    "data.prepare.n_val=8",
    "data.prepare.n_test=8",
    "data.prepare.n_test_novel=8",
)


@dataclass
class TinyRun:
    """A trained checkpoint; ``cwd`` is the folder it was trained from (its config's paths are relative to it)."""

    cwd: Path
    checkpoint: Path  # cwd / run / best.pt
    data_root: Path  # cwd / data / shapes_smoke


def run_script(script: str, *overrides: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a repo entry point (train.py, evaluate.py, caption.py) from ``cwd`` on one CPU thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *overrides], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Train 1 epoch on 40 shapes images with relative paths (as a user would), ~15 s on one core."""
    cwd = tmp_path_factory.mktemp("tiny_run")
    run_script("train.py", *TINY_TRAINING, "paths.data_dir=data", "hydra.run.dir=run", cwd=cwd)
    return TinyRun(cwd, cwd / "run" / "best.pt", cwd / "data" / "shapes_smoke")


def group_yaml(path) -> dict:
    """A config-group YAML as the constructor sees it: its keys without the schema's ``defaults`` list."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.load(path))
    values.pop("defaults", None)
    return values
