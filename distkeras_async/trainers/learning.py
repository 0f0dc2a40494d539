"""Did the run learn? A check after training that a returned center never passes for trained.

A run can end without an error and still return a useless model: a center that the rule
moved too little (an elastic step of 1e-4, a window that divides every commit away), while
the workers themselves learned. After training, the driver evaluates the loss of the
returned center and of the initial weights on a small sample of the training rows, and
compares them with the workers' own last losses. When the center kept less than half of the
improvement the workers made, the trainer warns (:class:`CenterStayedBehindWarning`) and
names the hyperparameter to change, as the algorithm describes it.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distkeras_async.errors import CenterStayedBehindWarning

logger = logging.getLogger(__name__)

# Rows of the training data the check evaluates on: enough for a stable mean loss, few enough
# that collecting them to the driver and two evaluations cost well under a second.
SAMPLE_ROWS = 512

# The center must keep at least this share of the loss improvement the workers made.
MIN_SHARE = 0.5

# The workers' "last" loss is the mean of their last steps: this share of each one's steps.
LAST_STEPS = 0.1

# Below this relative improvement of the workers' loss there is nothing to compare with:
# the shares of a tiny gain are noise.
MIN_GAIN = 0.05


@dataclass(frozen=True, slots=True)
class LearningReport:
    """Losses on the sample: the initial weights, the returned center, the workers' last."""

    initial_loss: float
    center_loss: float
    worker_loss: float

    @property
    def share(self) -> float:
        """The share of the workers' loss improvement the center kept (1: all of it)."""
        gained = self.initial_loss - self.worker_loss
        if gained <= MIN_GAIN * abs(self.initial_loss):
            return 1.0  # the workers barely improved either: nothing to compare with
        return (self.initial_loss - self.center_loss) / gained

    @property
    def stayed_behind(self) -> bool:
        """Whether the center kept less than :data:`MIN_SHARE` of the workers' improvement."""
        return self.share < MIN_SHARE


def workers_last_loss(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The median over workers of each worker's mean loss over its last steps."""
    per_worker: dict[int, list[float]] = {}
    for row in history:
        loss = row.get("loss")
        if loss is not None and math.isfinite(loss):
            per_worker.setdefault(int(row["worker"]), []).append(float(loss))
    lasts = []
    for losses in per_worker.values():
        tail = losses[-max(1, int(len(losses) * LAST_STEPS)) :]
        lasts.append(sum(tail) / len(tail))
    return statistics.median(lasts) if lasts else None


def sample_arrays(
    rows: Sequence[Mapping[str, Any]], features: Sequence[str], labels: Sequence[str]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows (numeric and array columns, as the trainer read them first) as arrays."""

    def column(name: str) -> np.ndarray:
        return np.asarray([row[name] for row in rows], dtype=np.float32)

    return [column(c) for c in features], [column(c) for c in labels]


def evaluate(model: Any, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> float:
    """The model's compiled loss on the sample.

    One eager forward pass and ``compute_loss`` over the whole sample: what ``evaluate``
    reports as its loss (the same number to float precision, measured on all three
    backends), without building and tracing a test function. On TensorFlow that cost 0.37 s
    a call on digits, paid twice per run; this costs 0.04 s, then 0.006 s. A model whose
    ``compute_loss`` does not take these arguments is evaluated by ``evaluate``.
    """
    import keras

    from distkeras_async.worker.inputs import shape_inputs

    x = shape_inputs(model, list(xs))
    inputs = x[0] if len(x) == 1 else x
    targets = ys[0] if len(ys) == 1 else list(ys)
    try:
        loss = model.compute_loss(
            x=inputs, y=targets, y_pred=model(inputs, training=False), training=False
        )
        return float(keras.ops.convert_to_numpy(loss))
    except (TypeError, ValueError, NotImplementedError):
        logs = model.evaluate(inputs, targets, verbose=0, return_dict=True)
        return float(logs["loss"])


def report(
    model: Any,
    initial: Sequence[np.ndarray],
    center: Sequence[np.ndarray],
    sample: tuple[list[np.ndarray], list[np.ndarray]],
    history: Sequence[Mapping[str, Any]],
) -> LearningReport | None:
    """Compare the returned center with the initial weights and the workers' progress.

    ``model`` is a compiled model of the run's architecture; its weights are changed.
    Returns None when there is nothing to compare (no sample, no worker loss).
    """
    xs, ys = sample
    worker_loss = workers_last_loss(history)
    if worker_loss is None or not len(xs[0]):
        return None
    model.set_weights(initial)
    initial_loss = evaluate(model, xs, ys)
    model.set_weights(center)
    center_loss = evaluate(model, xs, ys)
    if not (math.isfinite(initial_loss) and math.isfinite(center_loss)):
        return None
    return LearningReport(initial_loss, center_loss, worker_loss)


def check_center(
    trainer: Any,
    rows: Sequence[Mapping[str, Any]],
    model: Any,
    initial: list[Any],
    center: list[Any],
) -> LearningReport | None:
    """Run the check after a trainer's run; warn when the center stayed behind.

    ``rows`` are the first :data:`SAMPLE_ROWS` training rows, which the trainer read with
    its first check of the data (so the check costs no Spark job of its own). ``model``
    holds the returned center again when this returns. The warning is also appended to
    ``trainer.warnings``.
    """
    from distkeras_async import registry

    sample = sample_arrays(rows, trainer.features_col, trainer.label_col)
    try:
        result = report(model, initial, center, sample, trainer.history)
    except Exception:  # a check must never fail a run that trained
        logger.warning("could not evaluate the learning check", exc_info=True)
        result = None
    model.set_weights(center)  # report() evaluated other weights in this model
    if result is None or not result.stayed_behind:
        return result
    algorithm = registry.resolve(trainer.algorithm, **trainer.hyperparameters)
    hint = algorithm.lagging_center_hint(trainer.num_workers)
    message = (
        f"{type(trainer).__name__} returned a center that kept {result.share:.0%} of what "
        f"its workers learned: its loss on {len(sample[0][0])} training rows is "
        f"{result.center_loss:.3f}, against {result.initial_loss:.3f} for the initial "
        f"weights and {result.worker_loss:.3f} for the workers' last steps. {hint}"
    )
    trainer.warnings.append(message)
    warnings.warn(message, CenterStayedBehindWarning, stacklevel=3)
    return result
