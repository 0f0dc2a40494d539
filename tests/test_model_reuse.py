"""A Spark Python worker keeps its last model for the next task with the same spec.

The guarantees of ``distkeras_async.worker.reuse``: a reused model trains exactly as the
fresh build it replaces (weights, seed generators, optimizer state, metrics), on every
backend; only the default build without ``custom_objects``, and only models up to
``MAX_PARAMS``, are kept; a failed task never puts its model back; the same architecture
finds its model under other automatic names, other architectures and settings do not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from distkeras_async.datasets import digits_mlp
from distkeras_async.errors import InputDataError
from distkeras_async.worker import KerasWorker, reuse
from distkeras_async.worker.serialization import ModelSpec, build_model, describe_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reuse_check  # noqa: E402  (a script too: tests/reuse_check.py)


@pytest.fixture(autouse=True)
def nothing_kept():
    reuse.forget()
    yield
    reuse.forget()


def spec_of(model, optimizer="adam", loss="categorical_crossentropy", metrics=("accuracy",)):
    return describe_model(model, optimizer, loss, list(metrics)).to_json()


def start_of(spec):
    return build_model(ModelSpec.from_json(spec), compile=False).get_weights()


def test_a_reused_model_trains_exactly_as_a_fresh_one():
    result = reuse_check.compare()
    assert result["reused"] == [True, True] and result["control_reused"] is False
    assert result["moved"] > 1e-3, "training did not move the center: the check is empty"
    assert result["differences"] == [0.0, 0.0, 0.0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_reused_model_trains_exactly_as_a_fresh_one_on(backend):
    # PyTorch draws an unseeded dropout from its global stream (see reuse.py): seeded there.
    args = ["--seeded"] if backend == "torch" else []
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(HERE / "reuse_check.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["reused"] == [True, True] and result["control_reused"] is False
    assert result["moved"] > 1e-3
    assert result["differences"] == [0.0, 0.0, 0.0]


def test_models_built_again_under_other_automatic_names_share_a_key():
    first, again = spec_of(digits_mlp()), spec_of(digits_mlp())
    assert first != again, "Keras named the second build's layers as the first's"
    assert reuse.key_of("tensorflow", first) == reuse.key_of("tensorflow", again)


@pytest.mark.parametrize(
    "other",
    [
        lambda: spec_of(digits_mlp(hidden=32)),
        lambda: spec_of(digits_mlp(), optimizer="sgd"),
        lambda: spec_of(digits_mlp(), loss="mse"),
        lambda: spec_of(digits_mlp(), metrics=()),
    ],
    ids=["architecture", "optimizer", "loss", "metrics"],
)
def test_another_architecture_or_setting_has_another_key(other):
    assert reuse.key_of("tensorflow", spec_of(digits_mlp())) != reuse.key_of("tensorflow", other())


def test_another_backend_has_another_key():
    spec = spec_of(digits_mlp())
    assert reuse.key_of("tensorflow", spec) != reuse.key_of("jax", spec)


def test_chosen_names_stay_and_automatic_names_in_the_losses_keep_the_spec_as_key():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="score")(inputs))
    chosen = spec_of(model, loss="mse", metrics=())
    assert '"score"' in reuse.key_of("tensorflow", chosen)
    first, second = keras.layers.Dense(1), keras.layers.Dense(2)
    outputs = [first(inputs), second(inputs)]
    named = spec_of(
        keras.Model(inputs, outputs), loss={first.name: "mse", second.name: "mae"}, metrics=()
    )
    assert reuse.key_of("tensorflow", named) == f"tensorflow\n{named}"


def test_a_task_that_fails_does_not_put_its_model_back():
    spec = reuse_check.model_spec()
    start = start_of(spec)
    worker, _ = reuse_check.train_once(spec, start)
    key = reuse.key_of("tensorflow", spec)
    assert reuse.kept_model(key) is worker._built
    # The next task takes the model (its checks build it), then finds a bad row.
    from distkeras_async.worker.keras_worker import new_worker
    from distkeras_async.worker.partition import spool

    plan = worker.plan
    bad = pa.RecordBatch.from_pydict(
        {"x": pa.array([[1.0, 2.0]], pa.list_(pa.float32())), "y": pa.array([[1.0, 0.0]])}
    )
    with (
        spool(iter([bad]), ["x", "y"], limit=1 << 30) as partition,
        pytest.raises(InputDataError),
    ):
        new_worker(plan, 0, 1).train(partition)
    assert reuse.kept_model(key) is None


class OwnBuild(KerasWorker):
    def build_model(self):
        return super().build_model()


def test_a_worker_class_with_its_own_build_keeps_nothing():
    spec = reuse_check.model_spec()
    reuse_check.train_once(spec, start_of(spec), worker_class=OwnBuild)
    assert reuse.kept_model(reuse.key_of("tensorflow", spec)) is None


def test_a_model_with_custom_objects_is_never_kept():
    spec = reuse_check.model_spec()
    worker, _ = reuse_check.train_once(spec, start_of(spec))
    assert worker._reuse_key() is not None
    worker.plan = worker.plan.__class__(**{**worker.plan.__dict__, "custom_objects": {"f": np.abs}})
    assert worker._reuse_key() is None


def test_a_model_larger_than_the_limit_is_not_kept(monkeypatch):
    monkeypatch.setattr(reuse, "MAX_PARAMS", 10)
    spec = reuse_check.model_spec()
    reuse_check.train_once(spec, start_of(spec))
    assert reuse.kept_model(reuse.key_of("tensorflow", spec)) is None


def test_a_kept_model_whose_variables_differ_is_not_used():
    spec = reuse_check.model_spec()
    small = build_model(ModelSpec.from_json(spec_of(digits_mlp(hidden=8))))
    reuse.keep("k", small)
    fresh = build_model(ModelSpec.from_json(spec))
    assert reuse.adopt("k", fresh) is fresh
    assert reuse.kept_model("k") is None, "the mismatched model stays out"


def test_one_model_per_process():
    first = build_model(ModelSpec.from_json(spec_of(digits_mlp())))
    second = build_model(ModelSpec.from_json(spec_of(digits_mlp(hidden=8))))
    reuse.keep("a", first)
    reuse.keep("b", second)
    assert reuse.kept_model("a") is None and reuse.kept_model("b") is second
