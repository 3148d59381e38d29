"""Fingerprint of a fixed-seed run: SHA-256 of every tensor in last.pt and of metrics.json.

Refactors keep numbers: `python tests/golden/fingerprint.py record` (on the commit before a structural
change) writes tests/golden/reference.json; tests/test_golden.py reruns the same commands and compares.
Paths, the resolved config and the run id differ between machines and are not fingerprinted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).with_name("reference.json")

# A demo-size run (the demo's data, 3 epochs, validation every epoch) and a two-trial grid sweep.
TRAIN = [
    "data=shapes_smoke",
    "trainer.epochs=3",
    "trainer.val_every=1",
    "trainer.figures=1",
    "trainer.threads=1",
    "logger=none",
]
SWEEP = [
    "-m",
    "sweep=teacher_forcing",
    "scale=smoke",
    "hydra.sweeper.n_trials=2",
    "logger=none",
    "trainer.threads=1",
]


def _tensor_hashes(obj, prefix: str = "") -> dict[str, str]:
    """``{path: sha256}`` for every tensor in a nested checkpoint dict/list (``repr`` for other leaves)."""
    out: dict[str, str] = {}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()
        out[prefix] = f"{t.dtype}:{tuple(t.shape)}:{digest}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensor_hashes(v, f"{prefix}/{k}"))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(_tensor_hashes(v, f"{prefix}/{i}"))
    else:  # python RNG state, learning rates, step counts
        out[prefix] = repr(obj)
    return out


def fingerprint(run_dir: Path) -> dict:
    """Tensor hashes of last.pt (model, optimizer, scheduler, scaler, RNG) plus progress and metrics.json."""
    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    tensors = _tensor_hashes({k: ckpt[k] for k in ("model", "optimizer", "scaler", "rng")})
    progress = {k: v for k, v in ckpt["progress"].items() if k != "run_id"}
    return {
        "tensors": tensors,
        "progress": progress,
        "vocab": hashlib.sha256(json.dumps(ckpt["vocab"]).encode()).hexdigest(),
        "metrics.json": hashlib.sha256((run_dir / "metrics.json").read_bytes()).hexdigest(),
    }


def run_golden(work: Path) -> dict:
    """Run the golden training and sweep under ``work`` and fingerprint their run folders."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = [f"paths.data_dir={work / 'data'}", f"paths.output_dir={work / 'runs'}"]

    def train(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args, *common],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"golden run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")

    train(*TRAIN, f"hydra.run.dir={work / 'train'}")
    train(*SWEEP, f"hydra.sweep.dir={work / 'sweep'}")
    return {
        "train": fingerprint(work / "train"),
        "sweep/0": fingerprint(work / "sweep" / "0"),
        "sweep/1": fingerprint(work / "sweep" / "1"),
    }


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python tests/golden/fingerprint.py record")
    with tempfile.TemporaryDirectory() as tmp:
        result = run_golden(Path(tmp))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    REFERENCE.write_text(json.dumps({"commit": commit.strip(), **result}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
