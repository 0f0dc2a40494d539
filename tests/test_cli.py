"""The distkeras-async command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from distkeras_async import registry
from distkeras_async.cli import main


def test_algorithms_lists_every_algorithm_with_hyperparameters(capsys):
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    for name in registry.available():
        assert name in out
    assert "communication_window" in out and "momentum" in out and "rho" in out
    assert "synchronous" in out and "asynchronous" in out


def test_algorithms_json(capsys):
    assert main(["algorithms", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["eamsgd"]["hyperparameters"]["momentum"] == 0.7
    assert data["easgd"]["synchronous"] is True
    assert data["downpour"]["synchronous"] is False
    assert data["downpour"]["class"].endswith("Downpour")


def test_bench_wire_json(capsys):
    argv = ["bench", "wire", "--params", "20000", "--workers", "2", "--duration", "0.3"]
    assert main([*argv, "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 20000 and result["workers"] == 2
    assert (result["repeats"], result["duration_s"]) == (1, 0.3)
    # One sample per side, each a count of round trips in 0.3 s with 2 clients: the medians
    # are those samples, and the bytes moved follow from the parameter count.
    (ours,) = result["samples"]["round_trips_per_s"]
    (base,) = result["samples"]["baseline_round_trips_per_s"]
    assert (result["round_trips_per_s"], result["baseline_round_trips_per_s"]) == (ours, base)
    assert ours * 0.3 >= 2 and base * 0.3 >= 2  # each client completed round trips
    assert result["megabytes_per_s"] == pytest.approx(ours * 2 * 20000 * 4 / 1e6)


def test_bench_wire_with_int8_both_ways_counts_a_quarter_of_the_bytes(capsys):
    argv = ["bench", "wire", "--params", "20000", "--duration", "0.3", "--repeats", "1"]
    assert main([*argv, "--commit-dtype", "int8", "--pull-dtype", "int8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ours = result["round_trips_per_s"]
    assert ours * 0.3 >= 2
    assert result["megabytes_per_s"] == pytest.approx(ours * 2 * (20000 + 4) / 1e6)


def test_bench_wire_text(capsys):
    assert main(["bench", "wire", "--params", "1e4", "--duration", "0.2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "raw-socket baseline" in out and "ratio" in out


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "wire", "--params", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_installed_console_script():
    exe = shutil.which("distkeras-async")
    cmd = [exe] if exe else [sys.executable, "-m", "distkeras_async.cli"]
    done = subprocess.run(
        [*cmd, "algorithms"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "downpour" in done.stdout
