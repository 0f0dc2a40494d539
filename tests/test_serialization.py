"""Keras model and training configuration <-> JSON (Keras 3 formats, no pickle)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from distkeras_async.worker.serialization import (
    ModelSpec,
    SerializationError,
    build_model,
    describe_model,
    serialize_optimizer,
)


def small_model() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


def test_spec_round_trips_through_json_and_rebuilds_the_same_architecture():
    model = small_model()
    spec = describe_model(model, "adam", "categorical_crossentropy", ["accuracy"])
    text = spec.to_json()
    json.loads(text)  # plain JSON, nothing else
    rebuilt = build_model(ModelSpec.from_json(text))
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in model.get_weights()]
    assert rebuilt.optimizer.__class__.__name__ == "Adam"
    x = np.zeros((2, 4), np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1]]
    logs = rebuilt.train_on_batch(x, y, return_dict=True)
    assert {"loss", "accuracy"} <= set(logs)


@pytest.mark.parametrize(
    "optimizer",
    [
        "sgd",
        keras.optimizers.SGD(learning_rate=0.25, momentum=0.5),
        {"class_name": "RMSprop", "config": {"learning_rate": 0.125}},
    ],
)
def test_optimizer_as_name_instance_or_config(optimizer):
    config = serialize_optimizer(optimizer)
    rebuilt = keras.optimizers.deserialize(config)
    assert isinstance(rebuilt, keras.optimizers.Optimizer)
    if not isinstance(optimizer, str):
        assert float(rebuilt.learning_rate) in (0.25, 0.125)


def test_loss_and_metric_objects_are_described_by_config():
    spec = describe_model(
        small_model(),
        "adam",
        keras.losses.CategoricalCrossentropy(label_smoothing=0.25),
        [keras.metrics.CategoricalAccuracy(name="acc")],
    )
    assert spec.loss["config"]["label_smoothing"] == 0.25
    model = build_model(spec)
    assert model.loss.label_smoothing == 0.25


def test_errors_name_the_bad_argument():
    with pytest.raises(SerializationError, match="worker_optimizer"):
        serialize_optimizer("not-an-optimizer")
    with pytest.raises(SerializationError, match="built"):
        describe_model(keras.Sequential([keras.layers.Dense(2)]), "adam", "mse")
    with pytest.raises(SerializationError, match=r"keras\.Model"):
        describe_model(object(), "adam", "mse")


def test_building_a_model_leaves_its_spec_unchanged():
    """Keras' deserialisation pops a functional config's layers: a spec built into a model
    on the driver (for the callbacks) must still describe the model to the workers."""
    import keras

    from distkeras_async.worker.serialization import ModelSpec, build_model, describe_model

    top, bottom = keras.Input((3,), name="top"), keras.Input((2,), name="bottom")
    joined = keras.layers.Concatenate()([top, bottom])
    model = keras.Model([top, bottom], keras.layers.Dense(4, activation="softmax")(joined))
    spec = describe_model(model, "adam", "categorical_crossentropy", ["accuracy"], None)
    before = spec.to_json()
    build_model(spec)
    assert spec.to_json() == before
    rebuilt = build_model(ModelSpec.from_json(before))
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in model.get_weights()]
