"""Keras model, optimizer, loss and metrics <-> plain JSON, in Keras 3's own formats.

What travels to the workers is a :class:`ModelSpec`: JSON text made by
``keras.saving.serialize_keras_object`` (architecture, optimizer, loss and metrics configs).
No live Keras object is pickled; the initial weights do not travel in the job at all (every
worker pulls them from the parameter server). Custom layers, losses or metrics are resolved
by name through ``custom_objects`` on each side, as ``keras.models.load_model`` does.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from distkeras_async.errors import SerializationError


def _keras() -> Any:
    import keras

    return keras


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything a worker needs to rebuild and compile the model, as JSON-able values.

    Attributes:
        model: the model's Keras config (``serialize_keras_object``).
        optimizer: the worker optimizer's Keras config.
        loss: the loss: a name, a Keras config, or a list/dict of them (multi-output).
        metrics: the metrics, likewise.
        loss_weights: optional per-output loss weights.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    loss: Any
    metrics: Any
    loss_weights: Any = None

    def to_json(self) -> str:
        """The spec as JSON text."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """A spec from :meth:`to_json`'s text."""
        return cls(**json.loads(text))


def serialize_config(obj: Any, what: str) -> Any:
    """``obj`` as JSON-able values: scalars and Keras configs, nested in lists and dicts.

    Raises:
        SerializationError: naming ``what`` if a part has no Keras config.
    """
    keras = _keras()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, Mapping):
        if "class_name" in obj:  # already a Keras config
            return json.loads(json.dumps(obj))
        return {str(k): serialize_config(v, what) for k, v in obj.items()}
    if isinstance(obj, Sequence):
        return [serialize_config(v, what) for v in obj]
    try:
        config = keras.saving.serialize_keras_object(obj)
        return json.loads(json.dumps(config))
    except Exception as exc:
        raise SerializationError(
            f"{what} {obj!r} cannot be serialized as a Keras config: {exc}"
        ) from exc


def serialize_optimizer(optimizer: Any) -> dict[str, Any]:
    """A Keras config for a worker optimizer given as a name, an instance or a config.

    Raises:
        SerializationError: naming ``worker_optimizer`` if Keras does not know it.
    """
    keras = _keras()
    try:
        instance = (
            optimizer
            if isinstance(optimizer, keras.optimizers.Optimizer)
            else (keras.optimizers.get(optimizer))
        )
        config = keras.optimizers.serialize(instance)
    except Exception as exc:
        raise SerializationError(
            f"worker_optimizer {optimizer!r} is not a Keras optimizer name, instance or "
            f"config: {exc}"
        ) from exc
    return dict(json.loads(json.dumps(config)))


def describe_model(
    model: Any,
    worker_optimizer: Any,
    loss: Any,
    metrics: Any = None,
    loss_weights: Any = None,
) -> ModelSpec:
    """Describe a built Keras model and its training configuration as a :class:`ModelSpec`.

    Raises:
        SerializationError: if the model is not built, or any part has no Keras config.
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise SerializationError(f"keras_model must be a keras.Model, got {type(model).__name__}")
    if not model.built or not model.weights:
        raise SerializationError(
            "keras_model must be built (give it an Input, or call it once on data) so that its "
            "weights exist"
        )
    try:
        model_config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    except Exception as exc:
        raise SerializationError(
            f"keras_model cannot be serialized ({exc}); a subclassed model needs get_config() "
            "and to be passed in custom_objects"
        ) from exc
    return ModelSpec(
        model=model_config,
        optimizer=serialize_optimizer(worker_optimizer),
        loss=serialize_config(loss, "loss"),
        metrics=serialize_config(list(metrics or []), "metric"),
        loss_weights=serialize_config(loss_weights, "loss_weights"),
    )


def expand_custom_objects(custom_objects: Mapping[str, Any] | None) -> dict[str, Any]:
    """``custom_objects`` plus each object under its Keras registered name ("package>Class").

    A config names a registered class by its registered name, and a Spark worker process
    never ran the registering decorator: call this on the driver, where it did run.
    """
    keras = _keras()
    objects = dict(custom_objects or {})
    for obj in list(objects.values()):
        with contextlib.suppress(Exception):
            objects.setdefault(keras.saving.get_registered_name(obj), obj)
    return objects


def build_model(
    spec: ModelSpec, custom_objects: Mapping[str, Any] | None = None, *, compile: bool = True
) -> Any:
    """Rebuild the model from its spec (new, randomly initialised weights) and compile it.

    The spec is left as it was: Keras' deserialisation pops keys out of the configs it is
    given (a functional model's layers), so it gets copies.
    """
    keras = _keras()
    with keras.saving.custom_object_scope(expand_custom_objects(custom_objects)):
        model = keras.saving.deserialize_keras_object(copy.deepcopy(spec.model))
        if compile:
            model.compile(
                optimizer=keras.optimizers.deserialize(copy.deepcopy(spec.optimizer)),
                loss=_deserialize(copy.deepcopy(spec.loss)),
                metrics=_deserialize(copy.deepcopy(spec.metrics)),
                loss_weights=spec.loss_weights,
            )
    return model


def _deserialize(value: Any) -> Any:
    keras = _keras()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict) and "class_name" in value:
        return keras.saving.deserialize_keras_object(value)
    if isinstance(value, dict):
        return {k: _deserialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deserialize(v) for v in value]
    return value
