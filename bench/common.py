"""Shared benchmark plumbing: run records (commit, machine, command, date, load), timing, tables.

Every benchmark does::

    run = Run("train_speed")            # notes the start time and load average
    ...measure...
    print_table(rows, COLUMNS)
    run.write({"rows": rows, ...})      # bench/results/train_speed.json

Run a benchmark as ``python bench/<name>.py``; this folder is on ``sys.path`` then, so ``import common``
finds this file without making ``bench`` a package.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str | None:
    """``git rev-parse HEAD`` plus ``-dirty`` when tracked files differ from it. Outside a repo (a copy
    of a checkout, as a lent GPU machine gets) the ``BENCH_GIT_COMMIT`` its caller set, else None."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock while others work in the tree.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    cwd = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True, cwd=cwd, env=env
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
        ).stdout.strip()
    except OSError:
        head = ""
    if not head:
        return os.environ.get("BENCH_GIT_COMMIT") or None
    return f"{head}-dirty" if dirty else head


def machine() -> dict[str, Any]:
    """Platform, processor, CPU count, Python/torch versions and torch's thread count."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    cpu_model = _cpu_model()
    if cpu_model:
        info["cpu_model"] = cpu_model
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str | None:
    # platform.processor() is often just "x86_64" on Linux; /proc/cpuinfo names the actual chip.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    """1/5/15-minute load average (the machine is shared: high load means disturbed timings)."""
    return [round(x, 2) for x in os.getloadavg()]


class Run:
    """One benchmark run: records command, date and load at start; ``write`` saves the JSON record."""

    def __init__(self, name: str):
        self.name = name
        self.command = " ".join([Path(sys.executable).name, *sys.argv])
        self.date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.load_start = load_average()
        self.started = time.perf_counter()

    def record(self, results: dict[str, Any]) -> dict[str, Any]:
        """The full JSON record: provenance fields first, then ``results``."""
        return {
            "benchmark": self.name,
            "git_commit": git_commit(),
            "command": self.command,
            "date": self.date,
            "machine": machine(),
            "load_average": {"start": self.load_start, "end": load_average()},
            "wall_s": round(time.perf_counter() - self.started, 1),
            **results,
        }

    def write(self, results: dict[str, Any], key: str | None = None, out: str | Path | None = None) -> Path:
        """Write the record to ``out`` (default bench/results/<name>.json); under ``key`` to keep others."""
        path = Path(out) if out is not None else RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = self.record(results)
        if key is not None:  # e.g. one record per device ("cpu", "cuda") in the same file
            existing = json.loads(path.read_text()) if path.is_file() else {}
            record = {**existing, key: record}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
        print(f"wrote {path}" + (f" [{key}]" if key else ""))
        return path


def add_quick_and_out(parser: argparse.ArgumentParser, name: str, quick_help: str) -> None:
    """The options every benchmark shares: ``--quick`` (a plumbing check) and ``--out`` (its JSON path)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--out", default=None, help=f"JSON path (default bench/results/{name}.json; --quick: none)"
    )


def best_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, sync: bool = False) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones, in seconds.

    The minimum, not the mean: on a shared machine the least disturbed run is the best estimate.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:  # CUDA kernels run asynchronously: wait before reading the clock
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Plain-text table of ``rows`` for ``columns`` = [(key, header)]; floats get 3 significant places."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    cells = [[cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h), w) in enumerate(zip(columns, widths)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append(
            "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
        )
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str = "") -> None:
    """Print :func:`format_table` with an optional title line."""
    if title:
        print(title)
    print(format_table(rows, columns))
