"""`make ui` serves the local store on loopback only, and the documented screenshot is there and small."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_ui_binds_loopback_over_the_local_store():
    # The UI has no login: binding 0.0.0.0 would publish every run to the network.
    cmd = subprocess.run(
        ["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:///mlflow.db"


def test_ui_doc_shows_a_small_png_screenshot():
    doc = (REPO / "docs" / "ui.md").read_text()
    assert "](figures/mlflow_ui.png)" in doc
    png = REPO / "docs" / "figures" / "mlflow_ui.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 400_000
