"""`make ui`: the MLflow UI over a local store, one worker, and one line with its URL once it answers.

`mlflow ui` alone starts four workers (about 15 processes, ~35 s before the first answer on 2 cores)
and says nothing a newcomer can click; one worker serves one researcher's browser.
Usage: python -m captioner.ui [mlflow ui options, e.g. --backend-store-uri sqlite:///mlflow.db --port 5000]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence


def option(args: Sequence[str], name: str, default: str) -> str:
    """The value of ``--name value`` in ``args`` (or ``default``)."""
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else default


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    """Poll ``url`` until it answers, the server exits, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def main(argv: Sequence[str]) -> int:
    """Start the UI, print its URL when it answers, and serve until Ctrl-C."""
    args = list(argv)
    if "--workers" not in args and "-w" not in args:
        args += ["--workers", "1"]
    url = f"http://{option(args, '--host', '127.0.0.1')}:{option(args, '--port', '5000')}"
    # MLflow's background job runner (huey consumers for GenAI jobs) adds processes a run browser never uses.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", *args], env=env)
    try:
        if wait_ready(url + "/health", proc):
            print(f"MLflow UI ready: {url}  (Ctrl-C stops it)", flush=True)
            # MLflow 3's UI opens in its GenAI view and ignores the experiment's kind tag; this
            # parameter selects the model-training view (runs, metrics, compare), which our runs need.
            print(f"runs and sweeps: {url}/#/experiments?workflowType=machine_learning", flush=True)
        elif proc.poll() is None:
            print(f"MLflow UI started but {url} does not answer yet; see the messages above", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
