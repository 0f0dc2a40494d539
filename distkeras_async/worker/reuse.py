"""The last trained model, kept in a Spark Python worker for the next task with the same spec.

Spark reuses a Python worker process for later tasks (``spark.python.worker.reuse``, on by
default). Rebuilding and compiling a model costs little (0.02-0.06 s for the digits MLP),
but the first local step of a fresh model traces its train function: 0.6-0.9 s on this
project's 2-core VM, the largest part of a small training job's fixed cost over plain
``model.fit``. A worker that finished a task keeps its model here; the next task that would
build a model from the same spec takes it back, after every variable is set to the values
of the fresh build that task made anyway:

- the weights and the seed generators' states (``model.variables``), so a plugin rule whose
  ``worker_start`` keeps the local weights, and dropout, start as from a fresh build;
- the optimizer's variables (step counter, learning rate, slots) from the fresh model's
  optimizer, built for the same variables;
- the metrics, reset.

The traced (TensorFlow) or compiled (JAX) train function stays: that is what is saved.
A reused model then trains exactly as the fresh one would (same center, bit for bit, on
TensorFlow, JAX and PyTorch), with one exception: on PyTorch, a dropout without its own
``seed`` draws from torch's global random stream, which a fresh model's first ``fit``
advances (building it) and a reused one's does not, so its masks differ from a fresh run's.
Only the default :meth:`~distkeras_async.worker.keras_worker.KerasWorker.build_model`,
without ``custom_objects`` (the next task may ship changed code for them), and models of at
most :data:`MAX_PARAMS` parameters are kept, one per process: an idle Python worker holds it
(with its optimizer's slots) until its next task. A task that fails does not put its model
back.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import numpy as np

# The largest model kept between tasks: 4M float32 parameters are 16 MB, with Adam's two
# slots 48 MB, held by each idle Python worker. Past that, training time dwarfs the trace.
MAX_PARAMS = 4_000_000

_lock = threading.Lock()
_kept: dict[str, Any] = {}


def key_of(backend: str, model_spec: str) -> str:
    """The key a model built from ``model_spec`` (JSON) on ``backend`` is kept under.

    Keras names a layer it was not given a name for after its class and a counter of this
    process (``dense``, ``dense_7``): a model function called again builds the same model
    under other names (and its optimizer ``adam_1``). Such names are replaced, in the configs
    of the model and the optimizer, by their order of appearance, so that the same
    architecture finds its kept model. Chosen names stay as they are, and where an automatic
    name appears in the compile settings too (a loss per output name), the spec is the key
    as it is.
    """
    spec = json.loads(model_spec)
    built = {k: spec.get(k) for k in ("model", "optimizer")}
    names = _automatic_names(built, {})
    settings = json.dumps({k: v for k, v in spec.items() if k not in built}, sort_keys=True)
    if not names or any(json.dumps(name) in settings for name in names):
        return f"{backend}\n{model_spec}"
    return f"{backend}\n{json.dumps(_renamed(built, names), sort_keys=True)}\n{settings}"


def _snake(class_name: str) -> str:
    """Keras' own ``to_snake_case``: the base of the automatic names of a class."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _automatic_names(config: Any, names: dict[str, str]) -> dict[str, str]:
    """Automatic layer names in ``config``, each to a stand-in by order of appearance."""
    if isinstance(config, dict):
        inner = config.get("config")
        kind = config.get("class_name")
        if isinstance(kind, str) and isinstance(inner, dict):
            name = inner.get("name")
            automatic = rf"{re.escape(_snake(kind))}(_\d+)?"
            if isinstance(name, str) and re.fullmatch(automatic, name):
                names.setdefault(name, f"<{len(names)}>")
        for value in config.values():
            _automatic_names(value, names)
    elif isinstance(config, list):
        for value in config:
            _automatic_names(value, names)
    return names


def _renamed(config: Any, names: dict[str, str]) -> Any:
    if isinstance(config, dict):
        return {names.get(k, k): _renamed(v, names) for k, v in config.items()}
    if isinstance(config, list):
        return [_renamed(v, names) for v in config]
    if isinstance(config, str):
        return names.get(config, config)
    return config


def _state(model: Any) -> list[Any] | None:
    """Every variable whose value a fresh build sets: the model's, then its optimizer's."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return [*model.variables, *optimizer.variables]


def _same_structure(kept: list[Any], fresh: list[Any]) -> bool:
    return len(kept) == len(fresh) and all(
        tuple(a.shape) == tuple(b.shape) and str(a.dtype) == str(b.dtype)
        for a, b in zip(kept, fresh, strict=True)
    )


def adopt(key: str, fresh: Any) -> Any:
    """The model kept under ``key``, set to ``fresh``'s state; or ``fresh`` itself.

    ``fresh`` is the model the task built from the spec named by ``key``. The kept one is
    taken out (a task that fails never returns it); it is used only if its variables match
    ``fresh``'s one for one in shape and dtype, otherwise ``fresh`` is.
    """
    with _lock:
        kept = _kept.pop(key, None)
    if kept is None:
        return fresh
    fresh_state, kept_state = _state(fresh), _state(kept)
    if fresh_state is None or kept_state is None:
        return fresh
    if not _same_structure(kept_state, fresh_state):
        return fresh
    for target, source in zip(kept_state, fresh_state, strict=True):
        target.assign(np.asarray(source.numpy()))
    kept.reset_metrics()
    kept.stop_training = False
    return kept


def keep(key: str, model: Any) -> None:
    """Keep ``model`` (trained by a task that finished) for the next task with ``key``.

    A model larger than :data:`MAX_PARAMS` is not kept; one model per process.
    """
    if model.count_params() > MAX_PARAMS:
        return
    with _lock:
        _kept.clear()
        _kept[key] = model


def forget() -> None:
    """Drop the kept model (tests, and a process that needs the memory back)."""
    with _lock:
        _kept.clear()


def kept_model(key: str) -> Any | None:
    """The model kept under ``key``, left in place (None if there is none)."""
    with _lock:
        return _kept.get(key)
