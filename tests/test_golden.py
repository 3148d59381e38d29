"""Refactors keep numbers: a fixed-seed training and a two-trial sweep are bitwise equal to the reference.

The reference commit (tests/golden/reference.json) is the one before the redesign of issue 13; every
structural change since must reproduce its runs exactly. Bitwise equality holds per kind of CPU, so the
comparison is with the reference commit's fingerprints on this machine: recorded ones, or (a machine
reference.json does not list) the reference commit exported from git and run here first
(tests/golden/fingerprint.py). A change that is meant to move numbers re-records the reference
(`python tests/golden/fingerprint.py record`) and says so in its commit.
"""

from __future__ import annotations

import pytest
from golden.fingerprint import reference_here, run_golden

pytestmark = pytest.mark.slow  # ~1.5 min on one core (3 min on a machine reference.json lacks); CI runs it


def test_golden_runs_are_bitwise_equal_to_the_reference(tmp_path):
    reference, origin = reference_here(tmp_path / "reference")
    result = run_golden(tmp_path / "head")
    for run, expected in reference.items():
        got = result[run]
        assert got["progress"] == expected["progress"], f"{run} vs {origin}"
        assert got["vocab"] == expected["vocab"], f"{run} vs {origin}"
        changed = sorted(k for k in expected["tensors"] if got["tensors"].get(k) != expected["tensors"][k])
        assert set(got["tensors"]) == set(expected["tensors"]), f"{run}: tensor names changed"
        assert not changed, f"{run}: {len(changed)} tensors differ from the {origin}, e.g. {changed[:5]}"
        assert got["metrics.json"] == expected["metrics.json"], (
            f"{run}: metrics.json differs from the {origin}"
        )
