"""How many CPU threads torch uses: ``trainer.threads`` = ``auto`` (the default) or a fixed count.

A run given both cores of a 2-core machine while another process keeps one of them busy crawls: every
parallel region waits for the thread that shares its core (measured 3.5-30x slower, bench/threads.py).
One thread is safe beside company but leaves an idle core unused. ``auto`` counts the cores no other
process is using when the run starts and takes those. The thread count changes how torch splits its
sums, so floats differ between counts: a run records the count it used in its config (a resume takes
it from there), and a result that must reproduce bit for bit names it (the sweeps run at 1).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from captioner.errors import ConfigError

AUTO = "auto"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota if one is set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return cpus


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is no /proc."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_elsewhere(interval: float = 0.25) -> float:
    """CPUs' worth of work other processes did over ``interval`` seconds (this process's own excluded)."""
    start, own = _cpu_ticks(), time.process_time()
    time.sleep(interval)
    end, own = _cpu_ticks(), time.process_time() - own
    if start is None or end is None or end[1] == start[1]:
        return 0.0
    cpus = os.cpu_count() or 1
    busy_cpus = (end[0] - start[0]) / (end[1] - start[1]) * cpus  # machine-wide, in CPUs
    return max(0.0, busy_cpus - own / interval)


def resolve_threads(setting: str | int) -> tuple[int, str]:
    """(thread count, why) for a ``trainer.threads`` value: a positive count, or ``auto``.

    ``auto``: OMP_NUM_THREADS when the environment sets it (an explicit choice wins), else the usable
    CPUs less those other processes keep busy, at least 1.
    """
    text = str(setting).strip().lower()
    if text != AUTO:
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(
                f"trainer.threads={setting}: not a thread count; use auto (the idle cores) or a number >= 1"
            )
        return int(text), "trainer.threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cpus, others = usable_cpus(), busy_elsewhere()
    threads = max(1, min(cpus, cpus - round(others)))
    return threads, f"auto: {cpus} usable CPUs, {others:.1f} busy with other processes"


def configure_threads(setting: str | int) -> tuple[int, str]:
    """Set torch's intra-op thread count from ``trainer.threads``; returns the count and why."""
    import torch

    threads, why = resolve_threads(setting)
    torch.set_num_threads(threads)
    return threads, why
