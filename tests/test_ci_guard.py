"""`.ci/run` fails on any skipped test (DISTKERAS_FORBID_SKIPS=1, tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow  # a fresh pytest interpreter each
@pytest.mark.parametrize(("forbid", "expected"), [("1", 1), ("", 0)])
def test_a_skipped_test_fails_the_run_when_skips_are_forbidden(tmp_path, forbid, expected):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n\ndef test_needs_something():\n    pytest.skip('missing dependency')\n"
    )
    env = {**os.environ, "DISTKERAS_FORBID_SKIPS": forbid}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == expected, done.stdout[-2000:]
    if forbid:
        assert "1 test(s) skipped" in done.stdout
