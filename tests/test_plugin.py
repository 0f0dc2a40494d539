"""The example plugin distribution: installed with pip, discovered, and trained with on Spark."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distkeras_async import registry
from distkeras_async.datasets import digits_mlp
from distkeras_async.trainers import AsynchronousDistributedTrainer

# pip installs the plugin and the command runs in fresh interpreters.
pytestmark = pytest.mark.slow

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"
DISTRIBUTION = "distkeras-clipped-downpour"


def pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def installed_plugin():
    # No build isolation: build with the environment's setuptools, no download needed.
    pip("install", "--no-deps", "--no-build-isolation", str(PLUGIN))
    importlib.invalidate_caches()
    yield
    pip("uninstall", "-y", DISTRIBUTION)
    importlib.invalidate_caches()


def test_plugin_is_discovered_with_its_hyperparameters(installed_plugin):
    assert "clipped-downpour" in registry.available()
    cls = registry.get("clipped-downpour")
    assert cls.__module__ == "distkeras_clipped"
    assert cls.hyperparameters["max_norm"].default == 1.0
    done = subprocess.run(
        [sys.executable, "-m", "distkeras_async.cli", "algorithms"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "clipped-downpour" in done.stdout and "max_norm" in done.stdout


def test_training_with_the_plugin_uses_its_rule(installed_plugin, digits):
    train_df = digits.train
    model = digits_mlp()
    initial = np.concatenate([w.ravel() for w in model.get_weights()])
    max_norm = 1e-3
    trainer = AsynchronousDistributedTrainer(
        model,
        "adam",
        "categorical_crossentropy",
        num_workers=2,
        batch_size=32,
        num_epoch=2,
        master_port=0,
        progress=False,
        algorithm="clipped-downpour",
        max_norm=max_norm,
        communication_window=5,
    )
    trained = trainer.train(train_df)
    final = np.concatenate([w.ravel() for w in trained.get_weights()])
    stats = trainer.get_parameter_server_stats()
    moved = float(np.linalg.norm(final - initial))
    # Each commit moved the center by at most max_norm: the plugin's rule, not DOWNPOUR's
    # (which moves a fresh MLP by far more than 1e-3 per commit of 5 Adam steps).
    assert 0 < moved <= stats.commits * max_norm * 1.001
    # One commit per 5 local steps per worker, and one for the steps left over at the end.
    steps = [sum(1 for h in trainer.get_history() if h["worker"] == w) for w in range(2)]
    assert stats.commits == sum(-(-s // 5) for s in steps)
