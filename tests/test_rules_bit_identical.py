"""Every rule gives the same float32 bits as before the contract of version 3.

``tests/fixtures/rules_v2.npz`` was recorded by ``tests/rule_scenarios.py`` with the rules of
contract version 2 (four server-rule forms, class-level transforms); the rules rewritten on
the new contract run the same scenarios through the real server and must match bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from rule_scenarios import FIXTURES, run_all


@pytest.fixture(scope="module")
def results() -> dict[str, np.ndarray]:
    return run_all()


def test_every_recorded_array_is_reproduced_bit_for_bit(results):
    recorded = np.load(FIXTURES)
    assert set(results) == set(recorded.files)
    for key in recorded.files:
        expected, got = recorded[key], results[key]
        assert got.dtype == np.float32 and got.shape == expected.shape, key
        differ = int(np.count_nonzero(got.view(np.uint32) != expected.view(np.uint32)))
        assert differ == 0, f"{key}: {differ} of {got.size} elements differ from the recording"


def test_the_scenarios_move_the_center(results):
    # A scenario that changed nothing would match its recording whatever the rules did.
    recorded = np.load(FIXTURES)
    for key in recorded.files:
        if key.endswith("/server"):
            center = results[key]
            start = np.random.default_rng(1).standard_normal(center.size).astype(np.float32)
            assert not np.array_equal(center, start), key
