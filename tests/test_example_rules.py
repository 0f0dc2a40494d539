"""The two third-party rules in ``examples/rules/``, written from docs/custom-optimizer.md:
they pass the plugin kit, compute what their equations say through the real server, and
train digits."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from distkeras_async.testing import check_algorithm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "rules"))

import layer_clipping
import majority_sign

MajoritySign = majority_sign.MajoritySign
LayerClippedDownpour = layer_clipping.LayerClippedDownpour


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.mark.parametrize("rule", [MajoritySign, LayerClippedDownpour], ids=lambda r: r.name)
def test_the_example_rules_pass_the_kit(rule):
    check_algorithm(rule)


def test_majority_sign_moves_the_center_along_the_vote(make_server, connect):
    server = make_server(
        weights=[f32(1, 1, 1)], algorithm=MajoritySign, num_workers=3, server_step=0.25
    )
    clients = [connect(server, w) for w in range(3)]
    signs = (f32(1, 1, -1), f32(1, -1, -1), f32(-1, 1, 0))  # votes: +, +, -
    threads = [
        threading.Thread(target=c.commit_pull, args=(s,))
        for c, s in zip(clients, signs, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    np.testing.assert_array_equal(server.center_flat, [1.25, 1.25, 0.75])
    # A worker commits only signs: its transform takes the sign of its change.
    worker = MajoritySign()
    assert [type(t).__name__ for t in worker.worker_transforms()] == ["_Sign"]


def test_layer_clipping_clips_each_layer_on_its_own(make_server, connect):
    weights = [np.zeros((1, 2), np.float32), np.zeros(2, np.float32)]
    server = make_server(
        weights=weights, algorithm=LayerClippedDownpour, num_workers=1, max_norm=1.0
    )
    connect(server).commit(f32(3, -4, 0.3, 0.4))  # layer norms 5 and 0.5
    np.testing.assert_allclose(server.center_flat, [0.6, -0.8, 0.3, 0.4], rtol=1e-6)


@pytest.mark.slow
def test_the_example_rules_train_digits(digits):
    from pyspark import cloudpickle

    from distkeras_async.datasets import digits_mlp
    from distkeras_async.trainers import (
        AsynchronousDistributedTrainer,
        SynchronizedDistributedTrainer,
    )

    common = dict(
        num_workers=2,
        batch_size=32,
        num_epoch=8,
        master_port=0,
        progress=False,
        communication_window=5,
    )
    for module in (majority_sign, layer_clipping):
        cloudpickle.register_pickle_by_value(module)
    try:
        vote = SynchronizedDistributedTrainer(
            digits_mlp(),
            "adam",
            "categorical_crossentropy",
            algorithm=MajoritySign,
            server_step=0.005,
            **common,
        )
        assert digits.accuracy(vote.train(digits.train)) > 0.85
        clipped = AsynchronousDistributedTrainer(
            digits_mlp(),
            "adam",
            "categorical_crossentropy",
            algorithm=LayerClippedDownpour,
            max_norm=0.5,
            **common,
        )
        assert digits.accuracy(clipped.train(digits.train)) > 0.85
    finally:
        for module in (majority_sign, layer_clipping):
            cloudpickle.unregister_pickle_by_value(module)
