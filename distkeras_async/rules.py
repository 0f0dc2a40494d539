"""Shared building blocks of the built-in rules, written once and composed by the algorithms.

Two families cover every built-in algorithm:

* :class:`DeltaAlgorithm` -- the worker commits the change of its weights since it last
  pulled (optionally scaled), then adopts the new center (DOWNPOUR, ADAG, DynSGD);
* :class:`ElasticAlgorithm` -- the worker and the center pull towards each other by the
  elastic difference ``alpha * (x - center)`` (EASGD, asynchronous EASGD, EAMSGD).

Each helper works in place on flat float32 vectors and allocates no model-sized buffer
per call, because they run every exchange on the worker and every commit on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from distkeras_async.algorithm import (
    Algorithm,
    Hyperparameter,
    ServerHandle,
    UpdateMeta,
    positive,
)
from distkeras_async.errors import HyperparameterError
from distkeras_async.transforms import Transform, apply_all, check_chain


def add_scaled(center: np.ndarray, update: np.ndarray, scale: float) -> None:
    """``center += scale * update`` in place, scaling ``update`` in place (no temporary).

    The server hands a rule a received buffer that is the rule's to modify for the call.
    """
    if scale != 1.0:
        np.multiply(update, np.float32(scale), out=update)
    np.add(center, update, out=center)


def add_scaled_into(
    out: np.ndarray, center: np.ndarray, update: np.ndarray, scale: float = 1.0
) -> None:
    """``out = center + scale * update`` in one pass over ``out``.

    ``update`` is scaled in place first (the server's received buffer is the rule's).
    """
    if scale != 1.0:
        np.multiply(update, np.float32(scale), out=update)
    np.add(center, update, out=out)


def sum_into(center: np.ndarray, updates: Sequence[np.ndarray]) -> None:
    """``center += sum(updates)`` in place."""
    for update in updates:
        np.add(center, update, out=center)


def sum_onto(out: np.ndarray, center: np.ndarray, updates: Sequence[np.ndarray]) -> None:
    """``out = center + sum(updates)``, with no copy of ``center`` first."""
    if not updates:
        np.copyto(out, center)
        return
    np.add(center, updates[0], out=out)
    sum_into(out, updates[1:])


def mean_into(center: np.ndarray, updates: Sequence[np.ndarray]) -> None:
    """``center[:] = mean(updates)`` in place."""
    np.copyto(center, updates[0])
    for update in updates[1:]:
        np.add(center, update, out=center)
    center *= np.float32(1.0 / len(updates))


def staleness_scale(meta: UpdateMeta) -> float:
    """DynSGD's factor ``1 / (staleness + 1)``."""
    return 1.0 / (meta.staleness + 1)


class DeltaAlgorithm(Algorithm):
    """Worker rule: commit ``scale * (weights - last_pulled)``, then adopt the new center.

    Subclasses choose the scale (:meth:`delta_scale`) and the server rule, or chain update
    transforms (:mod:`distkeras_async.transforms`): ``worker_transforms`` change each delta
    before it is committed, ``server_transforms`` each received update before the center
    adds it. At the end the worker commits whatever it learned since its last exchange, so
    no local step is lost.
    """

    worker_transforms: ClassVar[Sequence[Transform]] = ()
    server_transforms: ClassVar[Sequence[Transform]] = ()

    _last: np.ndarray

    # center + update: a bounded linear update (see Algorithm.linear_update).
    linear_update = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.worker_transforms = check_chain(cls.worker_transforms, "worker")
        cls.server_transforms = check_chain(cls.server_transforms, "server")
        if cls.__dict__.get("server_transforms"):
            # Clipping or taking the sign is not the linear update the fast path relies on.
            cls.linear_update = False

    def delta_scale(self) -> float:
        """Factor applied to the local change before it is committed."""
        return 1.0

    def worker_start(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Pull the center and remember it as the reference for the first delta."""
        self._last = server.pull()
        return self._last.copy()

    def _delta(self, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        delta: np.ndarray = np.subtract(weights, self._last, out=out, dtype=np.float32)
        scale = self.delta_scale()
        if scale != 1.0:
            delta *= np.float32(scale)
        apply_all(self.worker_transforms, delta)
        return delta

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Commit the (scaled) change since the last pull and receive the new center."""
        # `weights` is this exchange's own copy: the delta and then the new weights are
        # written into it. At 10M parameters a new 40 MB array costs more (page faults) than
        # the round trip to the server.
        server.commit_pull(self._delta(weights, out=weights), out=self._last)
        np.copyto(weights, self._last)
        return weights

    def worker_finish(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Commit the last local change; the worker keeps its own final weights."""
        server.commit(self._delta(weights))
        return weights

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        """The center adds the committed change (after the server transforms)."""
        apply_all(self.server_transforms, update, meta)
        np.add(center, update, out=center)

    def server_update(
        self, out: np.ndarray, center: np.ndarray, update: np.ndarray, meta: UpdateMeta
    ) -> None:
        """``out = center + update`` in one pass (after the server transforms)."""
        apply_all(self.server_transforms, update, meta)
        np.add(center, update, out=out)


class ElasticAlgorithm(Algorithm):
    """Elastic averaging (Zhang, Choromanska, LeCun 2015): ``e = alpha * (x - center)``.

    The worker moves by ``-e`` and the center by ``+e``, with ``alpha = learning_rate * rho``.
    Asynchronous subclasses pull a fresh center before each exchange; the synchronous one
    uses the center of the previous round, which cannot have changed since.
    """

    hyperparameters: ClassVar[dict[str, Hyperparameter]] = {
        "rho": positive(5.0, "elasticity: how strongly workers and center attract"),
        "learning_rate": positive(0.01, "step of the elastic move; alpha = learning_rate * rho"),
    }

    rho: float
    learning_rate: float
    _center: np.ndarray

    # center + e (or + the sum of a round's e_i): a bounded linear update.
    linear_update = True

    @property
    def alpha(self) -> float:
        """The moving rate ``learning_rate * rho``."""
        return self.learning_rate * self.rho

    def validate(self) -> None:
        """Alpha above 1 would overshoot: the worker would jump past the center."""
        if not 0.0 < self.alpha <= 1.0:
            raise HyperparameterError(
                f"learning_rate * rho must be in (0, 1] (got {self.alpha:g}); "
                "lower 'learning_rate' or 'rho'"
            )

    def worker_start(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Pull the center; every worker starts from it."""
        self._center = server.pull()
        return self._center.copy()

    def lagging_center_hint(self, num_workers: int) -> str:
        """The elastic step is the knob: alpha = learning_rate * rho."""
        return (
            f"The elastic step alpha = learning_rate * rho = {self.learning_rate:g} * "
            f"{self.rho:g} = {self.alpha:g} moves the center by that fraction of a worker's "
            "distance per exchange: raise rho or learning_rate (learning_rate=0.01 with "
            "rho=5 gives alpha = 0.05)."
        )

    def elastic_move(self, weights: np.ndarray, center: np.ndarray) -> np.ndarray:
        """Return ``e = alpha * (weights - center)`` and apply ``weights -= e`` in place."""
        elastic: np.ndarray = np.subtract(weights, center, dtype=np.float32)
        elastic *= np.float32(self.alpha)
        weights -= elastic
        return elastic

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        """The center moves by the elastic difference: ``center += e``."""
        np.add(center, update, out=center)

    def server_update(
        self, out: np.ndarray, center: np.ndarray, update: np.ndarray, meta: UpdateMeta
    ) -> None:
        """``out = center + e`` in one pass."""
        np.add(center, update, out=out)

    def server_apply_round(
        self, center: np.ndarray, updates: Sequence[np.ndarray], metas: Sequence[UpdateMeta]
    ) -> None:
        """Synchronous form: ``center += sum_i e_i`` (the paper's beta = p * alpha)."""
        sum_into(center, updates)

    def server_update_round(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """``out = center + sum_i e_i``, with no copy of the center first."""
        sum_onto(out, center, updates)


class AsyncElasticAlgorithm(ElasticAlgorithm):
    """Asynchronous elastic exchange: pull, move both ways, commit (Algorithm 1 of the paper)."""

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Pull the current center, take the elastic step locally, commit it to the center."""
        center = server.pull(out=self._center)
        server.commit(self.elastic_move(weights, center))
        return weights
