"""The installable package: a wheel carries the configs, and its console scripts work from any folder.

The wheel is built from a copy of the files a clone of this working tree has (what `pip install
git+<repo>` builds from), so leftovers of earlier builds in the checkout's build/ cannot slip in.
It is installed into a venv that also sees this machine's packages (torch, Hydra, ...). Those include
the editable install of captioner, a .pth line that appends the checkout's src/ to sys.path after
site-packages; the venv's site-packages come first, so its wheel copy wins. PYTHONPATH would come
before both, so the commands here run without it, and the test checks where captioner was imported from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TRAINING
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"captioner-train", "captioner-evaluate", "captioner-caption", "captioner-prepare"}


def run(command: list, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """``command`` on one CPU thread, with ``pythonpath`` as PYTHONPATH (none: the venv decides)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONNOUSERSITE="1")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a clone-like copy of the repo, offline (no build isolation: setuptools is installed)."""
    tree, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = ok(run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is still listed
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    ok(run([*pip, "-w", out, tree], tmp_path_factory.getbasetemp()))
    (built,) = out.glob("captioner-*.whl")
    return built


def sweep_groups() -> list[str]:
    """The groups config.yaml's defaults list names that are not in conf/: sweeps/ holds them."""
    defaults = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["defaults"]
    groups = [key for entry in defaults if isinstance(entry, dict) for key in entry if " " not in key]
    return [group for group in groups if not (REPO / "conf" / group).is_dir()]


def test_wheel_carries_every_config_group_and_the_sweep_groups(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sweep", "version", "scale"} <= set(sweep_groups())
    expected = {
        f"captioner/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in REPO.glob("conf/**/*.yaml")
    }
    expected |= {
        f"captioner/conf/{g}/{p.name}" for g in sweep_groups() for p in REPO.glob(f"sweeps/{g}/*.yaml")
    }
    assert {"captioner/conf/config.yaml", "captioner/conf/encoder/resnet18.yaml"} <= expected
    assert {"captioner/conf/sweep/label_smoothing.yaml", "captioner/conf/version/v63.yaml"} <= expected
    assert sorted(expected - names) == []
    # Only the groups: the sweeps' report script and results stay in the checkout.
    assert {n for n in names if n.startswith("captioner/conf/")} == expected
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert {line.split(" = ")[0] for line in scripts.splitlines() if " = " in line} == SCRIPTS


@pytest.mark.slow
def test_installed_wheel_composes_trains_evaluates_and_captions_from_any_folder(
    wheel: Path, tmp_path: Path
) -> None:
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok(run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp_path))
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    ok(run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp_path))
    probe = "import captioner, captioner.cli as cli; print(captioner.__file__); print(cli.CONF_DIR)"
    module, conf = ok(run([python, "-c", probe], elsewhere)).stdout.split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(module) == site / "captioner" / "__init__.py" and Path(conf) == site / "captioner" / "conf"

    # The same composition as the checkout's train.py (run from the repo root), sweep groups included.
    overrides = ["trainer.epochs=3", "sweep=label_smoothing", "scale=cpu", "version=v63"]
    installed = ok(run([bin_dir / "captioner-train", "--cfg", "job", *overrides], elsewhere))
    checkout = ok(run([sys.executable, REPO / "train.py", "--cfg", "job", *overrides], REPO, REPO / "src"))
    assert installed.stdout == checkout.stdout and "seed_version: v63" in installed.stdout
    assert "is not available" not in installed.stderr  # Hydra's warning about the checkout's sweeps/

    smoke = [*TINY_TRAINING, "trainer.test_metrics=[bleu]", "hydra.run.dir=run"]  # no METEOR (Java)
    ok(run([bin_dir / "captioner-train", *smoke], elsewhere))
    assert (elsewhere / "run" / "best.pt").is_file() and (elsewhere / "data" / "shapes_smoke").is_dir()
    assert (
        f"path: {site / 'captioner' / 'conf'}\n" in (elsewhere / "run" / ".hydra" / "hydra.yaml").read_text()
    )

    evaluate = [bin_dir / "captioner-evaluate", "checkpoint=run/best.pt", "logger=none", "metrics=[bleu]"]
    ok(run(evaluate, elsewhere))
    assert (elsewhere / "run" / "eval_test_beam" / "metrics.json").is_file()
    Image.new("RGB", (128, 128), "red").save(elsewhere / "red.png")
    caption = [bin_dir / "captioner-caption", "checkpoint=run/best.pt", "images=red.png", "figures=false"]
    assert ok(run(caption, elsewhere)).stdout.startswith("red.png: ")

    # ../shared is relative to the launch folder: one line naming the key to set, not a traceback.
    prepare = run([bin_dir / "captioner-prepare", "data=flickr8k"], elsewhere)
    assert prepare.returncode == 2 and len(prepare.stderr.strip().splitlines()) == 1, prepare.stderr
    assert prepare.stderr.startswith("error: data.prepare.annotations=../shared/data/flickr8k not found")
    assert "set paths.shared (now ../shared)" in prepare.stderr
