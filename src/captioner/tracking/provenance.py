"""Where a run came from: git commit and dirty flag, command line, Hydra overrides and choices, run names."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # src/captioner/tracking -> repository root
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]+:)[^@\s]+@")


@dataclass
class Provenance:
    """What a run records about its origin (empty fields where it cannot be known)."""

    commit: str | None = None
    dirty: bool = False
    command: str = ""
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)  # Hydra group -> chosen config

    def tags(self) -> dict[str, str]:
        """MLflow tags: ``mlflow.source.*`` ones the UI shows, plus the command and overrides."""
        tags = {"mlflow.source.type": "LOCAL", "command": self.command}
        if sys.argv and sys.argv[0]:
            tags["mlflow.source.name"] = Path(sys.argv[0]).name
        if self.commit:
            tags.update({"mlflow.source.git.commit": self.commit, "git.dirty": str(self.dirty).lower()})
        if self.overrides:
            tags["overrides"] = " ".join(self.overrides)
        return tags

    def run_name(self, seed: int | None, version: str | None = None) -> str:
        """``<version or experiment>-s<seed>-<short commit>``, e.g. ``v42-s1-025df50`` or ``quality-s0-025df50``."""
        what = self.choices.get("version") or version or self.choices.get("experiment") or "train"
        parts = [what, f"s{seed}" if seed is not None else None, self.commit[:7] if self.commit else None]
        return "-".join(p for p in parts if p)


def mask_passwords(text: str) -> str:
    """``postgresql://user:secret@host`` -> ``postgresql://user:***@host`` anywhere in ``text``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def collect() -> Provenance:
    """The current process's provenance (git from this package's checkout, Hydra's view if running)."""
    commit, dirty = _git()
    command = mask_passwords(shlex.join([Path(sys.executable).name, *sys.argv]))
    overrides: list[str] = []
    choices: dict[str, str] = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            overrides = [mask_passwords(o) for o in hydra.overrides.task]
            choices = {k: str(v) for k, v in hydra.runtime.choices.items() if v is not None}
    except ImportError:  # Hydra is a dependency; this only guards odd embeddings
        pass
    return Provenance(commit, dirty, command, overrides, choices)


def _git() -> tuple[str | None, bool]:
    """HEAD of the checkout this code runs from, and whether tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None, False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):  # no git, or a hung filesystem: record nothing
        return None, False
