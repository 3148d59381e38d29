"""Run folders: every launch gets its own, however close together; a resume writes into the run it continues."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO, TINY_TRAINING, TinyRun
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from captioner.config import register
from captioner.train.run_folder import new_folder, run_dir


def test_a_taken_name_gets_the_next_suffix(tmp_path: Path) -> None:
    made = [run_dir(str(tmp_path), "2026-01-01/10-00-00") for _ in range(3)]
    assert [Path(p).relative_to(tmp_path).as_posix() for p in made] == [
        "2026-01-01/10-00-00",
        "2026-01-01/10-00-00-2",
        "2026-01-01/10-00-00-3",
    ]
    assert all(Path(p).is_dir() for p in made)


def _claim(base: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    start.wait()  # every process asks for the name at the same moment
    out.put(str(new_folder(base)))


def test_processes_asking_at_once_never_share_a_folder(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # the child only calls mkdir: no need to re-import torch
    n = 8
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / "10-00-00"), start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    made = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    assert len(set(made)) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["10-00-00", *(f"10-00-00-{k}" for k in range(2, n + 1))]
    )


def test_a_resume_writes_its_launch_files_inside_the_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "2026-01-01" / "10-00-00"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    for resume in (run, run / "last.pt"):
        made = Path(run_dir(str(tmp_path / "runs"), "2026-01-02/09-00-00", str(resume)))
        assert made.parent.parent == run / "resumed" and made.name.startswith("09-00-00")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "2026-01-01"
    ]  # no stray top-level folder
    # a resume path naming no checkpoint is not created: a fresh folder, and training says "not found"
    made = Path(run_dir(str(tmp_path / "runs"), "2026-01-02/09-00-00", str(tmp_path / "typo")))
    assert made == tmp_path / "runs" / "2026-01-02" / "09-00-00" and not (tmp_path / "typo").exists()


def test_two_torchrun_launches_at_once_get_a_folder_each_shared_by_its_ranks(tmp_path: Path) -> None:
    """torchrun starts a process per rank: one launch is one run, so its ranks share rank 0's folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = [str(REPO / "tests" / "run_dir_script.py"), str(tmp_path), "same"]
    launches = [
        subprocess.Popen([*cmd, *script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    folders = []
    for launch in launches:
        out, err = launch.communicate(timeout=300)
        assert launch.returncode == 0, err[-3000:]
        ranks = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith("rank "))
        assert sorted(ranks) == ["rank 0", "rank 1"] and ranks["rank 0"] == ranks["rank 1"], out
        folders.append(ranks["rank 0"])
    assert sorted(Path(f).name for f in folders) == ["same", "same-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same", "same-2"]


def test_the_default_run_dir_is_a_new_time_named_folder_per_launch(tmp_path: Path) -> None:
    register()
    folders = []
    for _ in range(2):  # two launches in (most likely) the same second
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.output_dir={tmp_path}"], return_hydra_config=True)
        folders.append(Path(OmegaConf.select(cfg, "hydra.run.dir")))
    assert folders[0] != folders[1] and all(f.is_dir() for f in folders)
    for folder in folders:
        assert folder.parent.parent == tmp_path and re.fullmatch(r"\d{4}-\d{2}-\d{2}", folder.parent.name)
        assert re.fullmatch(r"\d{2}-\d{2}-\d{2}(-\d+)?", folder.name), folder


def test_four_train_launches_at_once_get_four_folders(tiny_run: TinyRun, tmp_path: Path) -> None:
    """``for s in 0 1 2 3; do python train.py trainer.seed=$s & done`` within one second: the folder name
    is pinned (``same``) so that the four always collide, however slowly the machine starts them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "train.py"),
                *TINY_TRAINING,
                "paths.data_dir=data",
                f"trainer.seed={seed}",
                "trainer.threads=1",
                "trainer.test_metrics=[bleu]",  # no METEOR: its JVM would take most of the test's time
                f"hydra.run.dir=${{run_dir:{tmp_path},same}}",
            ],
            cwd=tiny_run.cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["same", "same-2", "same-3", "same-4"]
    seeds = set()
    for name in folders:
        run = tmp_path / name
        assert (run / "metrics.json").is_file() and (run / "train.log").is_file()
        seed = json.loads((run / "config.json").read_text())["trainer"]["seed"]
        assert torch.load(run / "last.pt", weights_only=True)["config"]["trainer"]["seed"] == seed
        seeds.add(seed)
    assert seeds == {0, 1, 2, 3}  # each run's checkpoint, config and metrics in its own folder
