"""Refactors keep numbers: a fixed-seed training and a two-trial sweep are bitwise equal to the reference.

The reference (tests/golden/reference.json) was recorded on the commit it names, before the redesign of
issue 13; every structural change since must reproduce it exactly. A change that is meant to move
numbers re-records it (`python tests/golden/fingerprint.py record`) and says so in its commit.
"""

from __future__ import annotations

import json

import pytest
from golden.fingerprint import REFERENCE, run_golden

pytestmark = pytest.mark.slow  # ~1.5 min on one core; CI runs it (.ci/run)


def test_golden_runs_are_bitwise_equal_to_the_reference(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    result = run_golden(tmp_path)
    for run, expected in ((k, v) for k, v in reference.items() if k != "commit"):
        got = result[run]
        assert got["progress"] == expected["progress"], run
        assert got["vocab"] == expected["vocab"], run
        changed = sorted(k for k in expected["tensors"] if got["tensors"].get(k) != expected["tensors"][k])
        assert set(got["tensors"]) == set(expected["tensors"]), f"{run}: tensor names changed"
        assert not changed, f"{run}: {len(changed)} tensors differ, e.g. {changed[:5]}"
        assert got["metrics.json"] == expected["metrics.json"], f"{run}: metrics.json differs"
