"""A reused model against a fresh one, on the backend this process runs Keras on.

``tests/test_model_reuse.py`` calls :func:`compare` in its own process (TensorFlow) and runs
this file as a script for JAX and PyTorch (``python tests/reuse_check.py [--seeded]``), which
prints the comparison as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pyarrow as pa

ROWS, FEATURES = 96, 6


def model_spec(seeded: bool = False) -> str:
    """Dropout (a seed generator), batch norm (non-trainable weights) and Adam (slots).

    ``seeded`` gives the dropout its own seed: PyTorch draws an unseeded dropout from torch's
    global random stream, which a fresh model's first ``fit`` advances and a kept one's does
    not (see :mod:`distkeras_async.worker.reuse`).
    """
    import keras

    from distkeras_async.worker.serialization import describe_model

    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.3, seed=7 if seeded else None)(hidden)
    hidden = keras.layers.BatchNormalization()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    return describe_model(model, "adam", "categorical_crossentropy", ["accuracy"]).to_json()


def data() -> pa.RecordBatch:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    rows = pa.list_(pa.float32())
    return pa.RecordBatch.from_pydict({"x": pa.array(list(x), rows), "y": pa.array(list(y), rows)})


def train_once(
    spec: str, start: list[np.ndarray], worker_class: Any = None
) -> tuple[Any, np.ndarray]:
    """One task against a new server that starts from ``start``: (the worker, the center)."""
    import keras

    from distkeras_async import new_secret
    from distkeras_async.server.parameter_server import ParameterServer
    from distkeras_async.worker.keras_worker import new_worker
    from distkeras_async.worker.partition import spool
    from distkeras_async.worker.plan import Endpoint, WorkerPlan

    secret = new_secret()
    server = ParameterServer(start, "downpour", num_workers=1, secret=secret, port=0)
    server.start()
    try:
        plan = WorkerPlan.create(
            spec,
            "downpour",
            Endpoint("127.0.0.1", (server.port,), secret),
            hyperparameters={"communication_window": 4},
            features_col=("x",),
            label_col=("y",),
            epochs=3,
            batch_size=16,
            shuffle=True,
            seed=11,
            worker_class=worker_class,
        )
        # A fresh build seeds its dropout from Python's random numbers: the same for each run.
        keras.utils.set_random_seed(5)
        worker = new_worker(plan, 0, 0)
        with spool(iter([data()]), ["x", "y"], limit=1 << 30) as partition:
            worker.train(partition)
        return worker, np.concatenate([w.ravel() for w in server.center])
    finally:
        server.stop()


def compare(seeded: bool = False) -> dict[str, Any]:
    """Fresh, then reused twice, then fresh again: each center, and whether it was reused."""
    from distkeras_async.worker import reuse
    from distkeras_async.worker.serialization import ModelSpec, build_model

    spec = model_spec(seeded)
    start = build_model(ModelSpec.from_json(spec), compile=False).get_weights()
    reuse.forget()
    fresh, center_fresh = train_once(spec, start)
    again, center_again = train_once(spec, start)
    third, center_third = train_once(spec, start)
    reuse.forget()
    control, center_control = train_once(spec, start)
    runs = (center_again, center_third, center_control)
    return {
        "reused": [again._built is fresh._built, third._built is fresh._built],
        "control_reused": control._built is fresh._built,
        "moved": float(np.abs(center_fresh - np.concatenate([w.ravel() for w in start])).max()),
        "differences": [float(np.abs(c - center_fresh).max()) for c in runs],
    }


if __name__ == "__main__":
    print(json.dumps(compare(seeded="--seeded" in sys.argv)))
    sys.stdout.flush()
