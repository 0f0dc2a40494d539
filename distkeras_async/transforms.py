"""Update transforms: small in-place steps a rule chains instead of rewriting its rules.

A transform changes a flat float32 update in place, allocating nothing model-sized (they run
on every commit). A :class:`~distkeras_async.rules.DeltaAlgorithm` applies its
``worker_transforms`` to each delta before committing it, and its ``server_transforms`` to
each received update before adding it to the center::

    from distkeras_async.rules import DeltaAlgorithm
    from distkeras_async.transforms import ClipNorm, Scale, Sign, StalenessDivide

    class SignDownpour(DeltaAlgorithm):
        '''signSGD-style: commit the sign of the change, scaled; damp stale commits.'''
        name = "sign-downpour"
        worker_transforms = (Sign(), Scale(1e-3))
        server_transforms = (StalenessDivide(),)

How a commit *travels* (float16, bfloat16, int8 with error feedback) is not a transform: it
is the ``commit_dtype`` hyperparameter every rule has, applied by the worker's connection
after the worker transforms, and undone on the server before the server transforms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from distkeras_async.algorithm import UpdateMeta


class Transform:
    """An in-place transform of one flat float32 update.

    Subclasses implement :meth:`__call__`. ``meta`` is given on the server (who committed,
    how stale) and is None on the worker.
    """

    needs_meta = False  # True for transforms that only make sense on the server

    def __call__(self, update: np.ndarray, meta: UpdateMeta | None = None) -> None:
        """Transform ``update`` in place."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _positive(transform: str, name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{transform} needs a finite {name} > 0, got {value!r}")
    return float(value)


class Scale(Transform):
    """``update *= factor``."""

    def __init__(self, factor: float) -> None:
        if not math.isfinite(factor):
            raise ValueError(f"Scale needs a finite factor, got {factor!r}")
        self.factor = float(factor)

    def __call__(self, update: np.ndarray, meta: UpdateMeta | None = None) -> None:
        """Multiply every element by the factor."""
        if self.factor != 1.0:
            np.multiply(update, np.float32(self.factor), out=update)


class ClipValue(Transform):
    """Clip every element to ``[-limit, limit]``."""

    def __init__(self, limit: float) -> None:
        self.limit = _positive("ClipValue", "limit", limit)

    def __call__(self, update: np.ndarray, meta: UpdateMeta | None = None) -> None:
        """Clip in place."""
        np.clip(update, -self.limit, self.limit, out=update)


class ClipNorm(Transform):
    """Scale the update down to an L2 norm of at most ``max_norm`` (its direction kept)."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = _positive("ClipNorm", "max_norm", max_norm)

    def __call__(self, update: np.ndarray, meta: UpdateMeta | None = None) -> None:
        """Rescale in place when the norm is larger than ``max_norm``."""
        flat = update.reshape(-1)
        norm = math.sqrt(float(np.dot(flat, flat)))
        if norm > self.max_norm:
            np.multiply(update, np.float32(self.max_norm / norm), out=update)


class Sign(Transform):
    """Replace every element by its sign (-1, 0 or 1), as signSGD commits."""

    def __call__(self, update: np.ndarray, meta: UpdateMeta | None = None) -> None:
        """Take the sign in place."""
        np.sign(update, out=update)


class StalenessDivide(Transform):
    """Divide by ``staleness + 1`` (DynSGD's damping); on the server, where staleness is known."""

    needs_meta = True

    def __call__(self, update: np.ndarray, meta: UpdateMeta | None = None) -> None:
        """Scale by ``1 / (staleness + 1)``."""
        if meta is None:
            raise ValueError("StalenessDivide runs on the server: it needs the commit's meta")
        if meta.staleness:
            np.multiply(update, np.float32(1.0 / (meta.staleness + 1)), out=update)


def apply_all(
    transforms: Sequence[Transform], update: np.ndarray, meta: UpdateMeta | None = None
) -> None:
    """Apply ``transforms`` to ``update`` in order, in place."""
    for transform in transforms:
        transform(update, meta)


def check_chain(transforms: Sequence[Transform], where: str) -> tuple[Transform, ...]:
    """``transforms`` as a tuple, each a :class:`Transform` usable ``where``.

    Raises:
        TypeError: for something that is not a Transform.
        ValueError: for a server-only transform among the worker's.
    """
    chain = tuple(transforms)
    for transform in chain:
        if not isinstance(transform, Transform):
            raise TypeError(f"{where} transforms must be Transform instances, got {transform!r}")
        if where == "worker" and transform.needs_meta:
            raise ValueError(f"{transform!r} needs the server's meta; put it in server_transforms")
    return chain
