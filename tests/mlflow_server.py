"""A real ``mlflow server`` on 127.0.0.1 for tests: start, kill, restart (same port, same store), SIGSTOP.

Tests that need one skip with the server's own last log line only when it cannot start here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server --workers 1`` over a SQLite store in ``root``; its process group is ours to signal."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        """Start and wait until ``/health`` answers; raises RuntimeError with the log tail if it cannot."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "server.log").open("ab")
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'm.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        # No job runner: it adds a dozen huey processes and ~10 s of start-up that tracking never uses.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.kill()
        tail = (self.root / "server.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s: {tail}")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole server (as a crash or an OOM kill would)."""
        self._signal(signal.SIGCONT)  # a stopped process group must be able to die cleanly
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        self._signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server per test module; tests that kill or pause it leave it running again."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        server.start()
    except (RuntimeError, OSError) as err:
        pytest.skip(f"cannot start an mlflow server here: {err}")
    yield server
    server.kill()


def metric_histories(uri: str, run_id: str, with_time: bool = False) -> dict[str, list[tuple]]:
    """``{metric: [(step, value[, timestamp]), ...]}`` of one run, as MLflow stores it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    keys = client.get_run(run_id).data.metrics
    out = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        # NaN (undefined scores) as a string: NaN != NaN would make equal histories compare unequal
        points = [(m.step, m.value if m.value == m.value else "nan", m.timestamp) for m in history]
        out[key] = points if with_time else [p[:2] for p in points]
    return out
