"""A training run's folder: a new one per launch, never shared, named after the launch time.

``hydra.run.dir`` calls :func:`run_dir` through the ``run_dir`` resolver. Two launches in the same
second (``for s in 0 1; do python train.py trainer.seed=$s & done``) used to get the same
``<date>/<H-M-S>`` folder and overwrite each other's checkpoints; here each launch creates its
folder with ``os.mkdir``, which fails when the name exists (atomic on local disks and NFS alike), and
takes the next free suffix: ``10-00-00``, ``10-00-00-2``, ``10-00-00-3``, ...
"""

from __future__ import annotations

import itertools
from pathlib import Path

from omegaconf import OmegaConf

from captioner.runtime.distributed import same_on_every_rank
from captioner.train.state import resume_checkpoint

RESOLVER, LOG_RESOLVER = "run_dir", "log_dir"
RESUMED = "resumed"  # a resumed run's launch record (.hydra/) goes to <run>/resumed/<stamp>


def new_folder(path: str | Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``, ... when taken; returns the folder this call created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()  # exclusive: of two launches asking for one name, exactly one gets it
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("itertools.count never ends")


def run_dir(output_dir: str, stamp: str, resume: str | None = None) -> str:
    """A new ``<output_dir>/<stamp>`` folder; under ``trainer.resume``, a new ``<run>/resumed/<stamp>`` in
    the run it continues (whose checkpoints it writes), so a resume leaves no stray top-level folder.

    Under torchrun, rank 0 creates it and every rank gets that one (one launch, one folder).
    """
    checkpoint = resume_checkpoint(resume) if resume else None
    if checkpoint is not None and checkpoint.is_file():
        base = checkpoint.parent / RESUMED / stamp
    else:  # a fresh run, or a resume path that names no checkpoint (training stops at "not found")
        base = Path(output_dir) / stamp
    return same_on_every_rank("run_dir", lambda: str(new_folder(base)))


def log_dir(launch_dir: str, resume: str | None = None) -> str:
    """The folder of a launch's ``train.log``: under ``trainer.resume``, the run it continues (whose log
    goes on), else the launch's own folder."""
    checkpoint = resume_checkpoint(resume) if resume else None
    return str(checkpoint.parent) if checkpoint is not None and checkpoint.is_file() else launch_dir


def register_resolver() -> None:
    """Make ``${run_dir:output_dir,stamp,resume}`` and ``${log_dir:launch_dir,resume}`` available to
    configs (once per process)."""
    if not OmegaConf.has_resolver(RESOLVER):
        # use_cache: a config that resolves its run folder twice gets the one folder it created
        OmegaConf.register_new_resolver(RESOLVER, run_dir, use_cache=True)
    if not OmegaConf.has_resolver(LOG_RESOLVER):
        OmegaConf.register_new_resolver(LOG_RESOLVER, log_dir)
