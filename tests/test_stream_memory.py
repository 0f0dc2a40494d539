"""A partition several times larger than a memory cap trains, and so does prediction.

Each case runs ``benchmarks/streaming.py``'s probe in a fresh Python process (so its peak
resident set is its own): one worker with a real parameter server on 127.0.0.1 and a
partition of generated rows arriving as Spark's Arrow batches. The peak is the kernel's
VmHWM, reset after the warm-up, file pages of the mapped spool included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parent.parent / "benchmarks" / "streaming.py"

# The cap: what a worker may add to its resident set for data, whatever the partition size.
CAP_MB = 360


def probe(command: str, mb: int, limit: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, str(PROBE), command, "--mb", str(mb), "--limit", str(limit)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_partition_several_times_the_cap_trains_within_it():
    result = probe("probe", 1200)
    assert result["streamed"]
    assert result["partition_mb"] > 3 * CAP_MB
    assert result["peak_mb"] - result["baseline_mb"] < CAP_MB, result


def test_the_probe_sees_a_partition_held_in_memory():
    """The same measurement of an in-memory partition grows by more than the partition."""
    result = probe("probe", 200, limit=1 << 40)
    assert not result["streamed"]
    assert result["peak_mb"] - result["baseline_mb"] > result["partition_mb"], result


def test_prediction_of_a_partition_several_times_the_cap_stays_within_it():
    result = probe("predict", 1200)
    assert result["partition_mb"] > 3 * CAP_MB
    assert result["peak_mb"] - result["baseline_mb"] < CAP_MB, result
