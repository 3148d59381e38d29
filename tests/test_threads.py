"""trainer.threads: a fixed count, or auto = the cores no other process is using when the run starts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from captioner.errors import ConfigError
from captioner.runtime import threads as th


def test_a_count_is_taken_as_given_and_a_bad_value_is_one_line(monkeypatch) -> None:
    assert th.resolve_threads("3") == (3, "trainer.threads")
    assert th.resolve_threads(1)[0] == 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ConfigError, match=r"^trainer.threads=.*: not a thread count; use auto"):
            th.resolve_threads(bad)


def test_auto_takes_the_idle_cores_and_leaves_busy_ones(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "usable_cpus", lambda: 4)
    for busy, expected in ((0.0, 4), (0.4, 4), (0.9, 3), (2.2, 2), (3.7, 1), (9.0, 1)):
        monkeypatch.setattr(th, "busy_elsewhere", lambda busy=busy: busy)
        assert th.resolve_threads("auto")[0] == expected, busy
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit environment wins over auto
    assert th.resolve_threads("auto") == (2, "OMP_NUM_THREADS")


def test_auto_sees_a_real_busy_process_beside_it(monkeypatch) -> None:
    """A spinning process beside this one is counted as (about) one busy CPU."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = th.busy_elsewhere(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy > 0.6  # one spinning process, plus whatever else the machine runs
