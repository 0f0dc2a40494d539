"""Rebuilt Keras models, kept per Python worker, so prediction tasks after the first reuse them.

Spark reuses its Python workers between tasks (``spark.python.worker.reuse``, on by
default). A prediction task that rebuilt the model every time paid for deserialising it,
setting its weights and tracing its predict function again: about 0.16 s per task for a
2.2M-parameter MLP, and a retracing warning on every transform. Tasks import this module
on the executor (it is not pickled with them), so its cache lives as long as the worker.
Entries are keyed by a hash of the model's config and weights, and bounded.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

# Models kept per Python worker: a few pipelines' models, not an unbounded history of them.
MAX_MODELS = 4

_models: OrderedDict[str, Any] = OrderedDict()


def model_key(config: str, weights: bytes) -> str:
    """The cache key of a model: the SHA-256 of its JSON config and its weights' bytes."""
    digest = hashlib.sha256(config.encode())
    digest.update(weights)
    return digest.hexdigest()


def cached_model(key: str, build: Callable[[], Any]) -> Any:
    """The model cached under ``key``, built with ``build()`` the first time."""
    model = _models.get(key)
    if model is None:
        model = build()
        _models[key] = model
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
    else:
        _models.move_to_end(key)
    return model


def cache_size() -> int:
    """How many models this Python worker holds (for tests)."""
    return len(_models)


def build_from(
    config: str, weights: bytes, layout_wire: list[Any], custom_objects: Mapping[str, Any]
) -> Any:
    """Rebuild a model from its JSON config and flat float32 weights (no pickle)."""
    import keras
    import numpy as np

    from distkeras_async.layout import Layout

    with keras.saving.custom_object_scope(dict(custom_objects)):
        model = keras.saving.deserialize_keras_object(json.loads(config))
    layout = Layout.from_wire(layout_wire)
    model.set_weights(layout.unflatten(np.frombuffer(weights, np.float32)))
    return model
