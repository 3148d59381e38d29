"""The early weights check: its file table matches torchvision, and it runs before torch is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.cli import encoder_needing_weights
from captioner.runtime import hub_weights
from captioner.runtime.hub_weights import (
    ARCHS,
    WEIGHT_FILES,
    hub_checkpoints_dir,
    pretrained_weights,
    unreachable_weights,
)

REPO = Path(__file__).resolve().parents[1]


def test_table_names_the_files_torchvision_loads():
    for arch in ARCHS:
        assert WEIGHT_FILES[arch] == pretrained_weights(arch).url.rsplit("/", 1)[-1], arch


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"TORCH_HOME": "/tmp/th"},
        {"XDG_CACHE_HOME": "/tmp/xdg"},
        {"TORCH_HOME": "~/t", "XDG_CACHE_HOME": "/x"},
    ],
)
def test_hub_folder_is_torchs(monkeypatch, env):
    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert hub_checkpoints_dir() == Path(torch.hub.get_dir()) / "checkpoints"


@pytest.mark.parametrize(
    ("argv", "arch"),
    [
        ([], "mobilenet_v2"),  # the default encoder
        (["encoder=shufflenet", "tf=inv_sigmoid"], "shufflenet_v2_x0_5"),  # an alias
        (["encoder=resnet18", "encoder.arch=resnet34"], "resnet34"),
        (["encoder=shufflenet", "encoder.pretrained=false"], None),
        (["experiment=demo"], None),  # composed elsewhere: the full check decides
        (["sweep=teacher_forcing", "scale=cpu"], None),
        (["trainer.resume=runs/x/last.pt"], None),
        (["-m", "encoder=shufflenet"], None),
        (["encoder=no_such_encoder"], None),  # precheck names the valid choices
    ],
)
def test_encoder_read_from_the_command(argv, arch):
    assert encoder_needing_weights(argv) == arch


def test_cached_file_or_answering_server_is_never_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / WEIGHT_FILES["resnet18"]).touch()
    assert unreachable_weights("resnet18") is None
    assert unreachable_weights("not_an_arch") is None

    def answers_404(request, timeout):
        raise hub_weights.urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(hub_weights.urllib.request, "urlopen", answers_404)
    assert unreachable_weights("resnet34") is None  # the server answered: torchvision decides later

    def offline(request, timeout):
        raise hub_weights.urllib.error.URLError("no route")

    monkeypatch.setattr(hub_weights.urllib.request, "urlopen", offline)
    line = unreachable_weights("resnet34")
    assert "resnet34-b627a593.pth" in line and "encoder=mobilenet_v2" in line and "URLError" in line


def test_early_check_imports_neither_torch_nor_torchvision():
    code = (
        "import sys; from captioner.cli import check_offline_weights; "
        "check_offline_weights(['encoder=shufflenet', 'encoder.pretrained=false']); "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
