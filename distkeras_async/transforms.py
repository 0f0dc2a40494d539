"""Update transforms: values with explicit state that a rule chains on either side.

A transform is two functions, as in optax: ``init(layout) -> state`` makes its state for a
model of that layout, and ``update(update, state, context) -> (update, state)`` transforms
one flat float32 update and returns the next state. State is a tuple of numpy arrays (nested
tuples for a chain), so the server can checkpoint it and a worker's state can travel with its
commits and come back to a retried attempt (see ``docs/custom-optimizer.md``). The built-in
ones below work in place and allocate nothing model-sized (they run on every commit)::

    from distkeras_async import delta_rule
    from distkeras_async.transforms import clip_norm, momentum

    MomentumDownpour = delta_rule(
        "momentum-downpour", "DOWNPOUR whose worker commits a momentum of its changes.",
        worker=lambda h: [momentum(0.9), clip_norm(10.0)],
    )

The ``context`` says where the transform runs: the model's layout (per-tensor transforms
work on its tensors), the weights it is computed against (the worker's local weights, or the
server's center), and on the server the round's commits (who committed, how stale). How a
commit *travels* (float16, bfloat16, int8 with error feedback) is not a transform but the
``commit_dtype`` hyperparameter every rule has, applied after the worker's transforms and
undone before the server's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from distkeras_async.algorithm import State, UpdateMeta

if TYPE_CHECKING:  # handed to transforms; a plugin imports nothing of the wire
    from distkeras_async.layout import Layout

__all__ = [
    "Context",
    "Transform",
    "chain",
    "clip_norm",
    "clip_tensor_norm",
    "clip_value",
    "momentum",
    "scale",
    "scale_by_trust_ratio",
    "sign",
    "staleness_divide",
]


@dataclass(frozen=True, slots=True)
class Context:
    """Where a transform runs.

    Attributes:
        layout: the model's tensors, in ``get_weights()`` order (the update is their
            concatenation); on one shard of a sharded server, the pieces of that shard.
        weights: the worker's local weights, or the server's center (read, never write).
        metas: on the server, the round's commits (one, for an asynchronous commit); empty
            on the worker.
    """

    layout: Layout
    weights: np.ndarray | None = None
    metas: tuple[UpdateMeta, ...] = field(default=())

    @property
    def on_server(self) -> bool:
        """Whether the transform runs on the server (it knows the commits)."""
        return bool(self.metas)


class Transform:
    """One step of a chain: ``init(layout) -> state``, ``update(u, state, ctx) -> (u, state)``.

    Subclasses implement :meth:`update` and, when they keep state, :meth:`init`. ``update``
    may change the update in place and return it (the built-in ones do), or return a new
    array; it returns the state for the next call, leaving the one it was given intact only
    where it says so (in place is fine: the caller keeps only what is returned).

    Attributes:
        server_only: the transform needs the server's commits (``context.metas``).
        elementwise: each element of the result depends only on the same element of the
            update and the state; a sharded server, whose shards each hold a slice of the
            center, runs only such transforms.
        bounded_linear: the result is ``b * update`` with ``|b| <= 1`` and the transform
            cannot raise, so a rule made of such transforms keeps the server's in-place
            fast path (:attr:`~distkeras_async.algorithm.Algorithm.linear_update`).
    """

    server_only: ClassVar[bool] = False
    elementwise: ClassVar[bool] = True
    bounded_linear: bool = False

    def init(self, layout: Layout) -> State:
        """The state before the first update (none by default)."""
        return ()

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        """Transform ``update``; return it and the next state."""
        raise NotImplementedError(f"{type(self).__name__} does not define update")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _positive(transform: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{transform} needs a finite {name} > 0, got {value!r}")
    return float(value)


class _Scale(Transform):
    def __init__(self, factor: float) -> None:
        if isinstance(factor, bool) or not math.isfinite(factor):
            raise ValueError(f"scale needs a finite factor, got {factor!r}")
        self.factor = float(factor)
        self.bounded_linear = abs(self.factor) <= 1.0

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        if self.factor != 1.0:
            np.multiply(update, np.float32(self.factor), out=update)
        return update, state


class _ClipValue(Transform):
    def __init__(self, limit: float) -> None:
        self.limit = _positive("clip_value", "limit", limit)

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        np.clip(update, -self.limit, self.limit, out=update)
        return update, state


def _clip_to_norm(piece: np.ndarray, max_norm: float) -> None:
    flat = piece.reshape(-1)
    norm = math.sqrt(float(np.dot(flat, flat)))
    if norm > max_norm:
        np.multiply(piece, np.float32(max_norm / norm), out=piece)


class _ClipNorm(Transform):
    elementwise = False

    def __init__(self, max_norm: float) -> None:
        self.max_norm = _positive("clip_norm", "max_norm", max_norm)

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        _clip_to_norm(update, self.max_norm)
        return update, state


class _ClipTensorNorm(_ClipNorm):
    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        for piece in context.layout.views(update):
            _clip_to_norm(piece, self.max_norm)
        return update, state


class _TrustRatio(Transform):
    elementwise = False

    def __init__(self, coefficient: float, eps: float) -> None:
        self.coefficient = _positive("scale_by_trust_ratio", "coefficient", coefficient)
        self.eps = _positive("scale_by_trust_ratio", "eps", eps)

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        if context.weights is None:
            raise ValueError("scale_by_trust_ratio needs the weights in its context")
        for piece, weights in zip(
            context.layout.views(update), context.layout.views(context.weights), strict=True
        ):
            step = math.sqrt(float(np.dot(piece.reshape(-1), piece.reshape(-1))))
            norm = math.sqrt(float(np.dot(weights.reshape(-1), weights.reshape(-1))))
            if step > 0 and norm > 0:
                ratio = self.coefficient * norm / (step + self.eps)
                np.multiply(piece, np.float32(ratio), out=piece)
        return update, state


class _Sign(Transform):
    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        np.sign(update, out=update)
        return update, state


class _StalenessDivide(Transform):
    server_only = True
    bounded_linear = True

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        if len(context.metas) != 1:
            raise ValueError(
                "staleness_divide runs on the server on one asynchronous commit at a time, "
                f"got a round of {len(context.metas)}"
            )
        staleness = context.metas[0].staleness
        if staleness:
            np.multiply(update, np.float32(1.0 / (staleness + 1)), out=update)
        return update, state


class _Momentum(Transform):
    def __init__(self, decay: float, nesterov: bool) -> None:
        if isinstance(decay, bool) or not (math.isfinite(decay) and 0 <= decay < 1):
            raise ValueError(f"momentum needs a decay in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.nesterov = bool(nesterov)

    def init(self, layout: Layout) -> State:
        return (np.zeros(layout.size, np.float32),)

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        (velocity,) = state
        velocity *= np.float32(self.decay)
        velocity += update
        if self.nesterov:  # u + decay * v
            update += np.float32(self.decay) * velocity
        else:
            np.copyto(update, velocity)
        return update, (velocity,)


class _Chain(Transform):
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = check_chain(transforms)
        self.server_only = any(t.server_only for t in self.transforms)  # type: ignore[misc]
        self.elementwise = all(t.elementwise for t in self.transforms)  # type: ignore[misc]
        self.bounded_linear = all(t.bounded_linear for t in self.transforms)

    def init(self, layout: Layout) -> State:
        return tuple(t.init(layout) for t in self.transforms)

    def update(
        self, update: np.ndarray, state: State, context: Context
    ) -> tuple[np.ndarray, State]:
        states = []
        for transform, own in zip(self.transforms, state, strict=True):
            update, after = transform.update(update, own, context)
            states.append(after)
        return update, tuple(states)

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.transforms))})"


def scale(factor: float) -> Transform:
    """``update *= factor``."""
    return _Scale(factor)


def clip_value(limit: float) -> Transform:
    """Every element into ``[-limit, limit]``."""
    return _ClipValue(limit)


def clip_norm(max_norm: float) -> Transform:
    """The whole update scaled down to an L2 norm of at most ``max_norm``, direction kept."""
    return _ClipNorm(max_norm)


def clip_tensor_norm(max_norm: float) -> Transform:
    """Each tensor's part of the update scaled down to an L2 norm of at most ``max_norm``."""
    return _ClipTensorNorm(max_norm)


def scale_by_trust_ratio(coefficient: float = 1e-3, eps: float = 1e-9) -> Transform:
    """Layer-wise scale (LARS, You et al. 2017), one tensor at a time.

    Each tensor's update is rescaled by ``coefficient * |w| / |u|``, so every layer moves by
    the same fraction of its weights' norm. A tensor whose weights or update are zero is
    left as it is.
    """
    return _TrustRatio(coefficient, eps)


def sign() -> Transform:
    """Every element to its sign, -1, 0 or 1 (signSGD)."""
    return _Sign()


def staleness_divide() -> Transform:
    """``update /= staleness + 1`` (DynSGD's damping); server only, asynchronous only."""
    return _StalenessDivide()


def momentum(decay: float, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum: ``v = decay * v + u``, then ``u = v``.

    With ``nesterov``, ``u = u + decay * v``. Its state is the velocity ``v``, one float32
    vector of the model's size.
    """
    return _Momentum(decay, nesterov)


def chain(*transforms: Transform) -> Transform:
    """The transforms applied in order, as one; its state is theirs, as a tuple."""
    return _Chain(transforms)


def check_chain(transforms: Sequence[Transform] | Transform) -> tuple[Transform, ...]:
    """``transforms`` as a tuple of :class:`Transform` values.

    Raises:
        TypeError: for something that is not a Transform.
    """
    chain_ = (transforms,) if isinstance(transforms, Transform) else tuple(transforms)
    for transform in chain_:
        if not isinstance(transform, Transform):
            raise TypeError(f"transforms must be Transform values, got {transform!r}")
    return chain_


def run_chain(
    transforms: Sequence[Transform], update: np.ndarray, states: list[Any], context: Context
) -> np.ndarray:
    """Apply ``transforms`` in order, replacing each one's entry of ``states``."""
    for index, transform in enumerate(transforms):
        update, states[index] = transform.update(update, states[index], context)
    return update
