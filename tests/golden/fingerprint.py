"""Fingerprint of a fixed-seed run: SHA-256 of every tensor in last.pt and of metrics.json.

Refactors keep numbers: tests/test_golden.py reruns the golden commands on HEAD and compares them with
the same commands run on the reference commit (tests/golden/reference.json names it) ON THIS MACHINE.
Bitwise equality only holds on one kind of CPU: another vendor or instruction set (AVX2 vs AVX-512,
MKL's paths on Intel vs AMD) rounds float sums differently, so every tensor the decoder trained differs.
reference.json therefore keeps one fingerprint per machine (CPU model + torch version); on a machine
it does not know, the test exports the reference commit (`git archive`) into a temporary folder, runs
the golden commands there, and compares with that (twice the time, same guarantee).

    python tests/golden/fingerprint.py record         # a change MEANT to move numbers: HEAD becomes the
                                                      # reference commit, this machine its only entry
    python tests/golden/fingerprint.py add-machine    # add this machine's fingerprint of the reference commit

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


def run_golden(work: Path, repo: Path = REPO) -> dict:
    """Run the golden training and sweep of the sources in ``repo`` under ``work``; fingerprint the runs."""
    # The repo's own src first, so an exported commit runs its code, not the installed package.
    pythonpath = os.pathsep.join(p for p in (str(repo / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": pythonpath}
    common = [f"paths.data_dir={work / 'data'}", f"paths.output_dir={work / 'runs'}"]

    def train(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, str(repo / "train.py"), *args, *common],
            cwd=repo,
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


def machine() -> str:
    """What decides float rounding here: the CPU model and the torch build."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} | torch {torch.__version__}"


def load_reference() -> dict:
    """``{"commit": ..., "machines": {machine(): fingerprints}}``."""
    return json.loads(REFERENCE.read_text())


def reference_here(work: Path) -> tuple[dict, str]:
    """This machine's fingerprints of the reference commit, and where they came from.

    Recorded ones when reference.json has this machine; otherwise the reference commit is exported
    from git into ``work`` and run here. Raises RuntimeError when the commit is not in the clone.
    """
    reference = load_reference()
    here = machine()
    if here in reference["machines"]:
        return reference["machines"][here], f"recorded for {here}"
    commit = reference["commit"]
    source = work / "reference_src"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(
            f"the golden reference commit {commit[:12]} is not in this clone ({archive.stderr.decode().strip()}); "
            "clone with history (not --depth 1) to run the golden test on a new machine"
        )
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    return run_golden(work / "reference_run", source), f"commit {commit[:12]} run here ({here})"


def _record(add_machine: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if add_machine:
            reference = load_reference()
            result, _ = reference_here(Path(tmp))
            reference["machines"][machine()] = result
        else:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
            reference = {"commit": commit.stdout.strip(), "machines": {machine(): run_golden(Path(tmp))}}
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE} ({machine()})")


if __name__ == "__main__":
    if sys.argv[1:] not in (["record"], ["add-machine"]):
        sys.exit("usage: python tests/golden/fingerprint.py record|add-machine")
    _record(add_machine=sys.argv[1] == "add-machine")
