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

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from distkeras_async.algorithm import (
    Algorithm,
    Hyperparameter,
    ServerHandle,
    State,
    UpdateMeta,
    positive,
)
from distkeras_async.errors import AlgorithmError, HyperparameterError
from distkeras_async.transforms import Context, Transform, check_chain, run_chain

if TYPE_CHECKING:
    from distkeras_async.layout import Layout


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

    The server adds the round's commits to the center. Both sides chain transforms
    (:mod:`distkeras_async.transforms`), built from the rule's hyperparameters:
    :meth:`worker_transforms` change each delta before it is committed (their state is the
    worker's, and travels with its commits), :meth:`server_transforms` the sum of a round's
    commits (one commit, for an asynchronous rule) before the center adds it (their state is
    the server's, saved in checkpoints). At the end the worker commits whatever it learned
    since its last exchange, so no local step is lost. :func:`delta_rule` builds one.
    """

    # center + the sum of the round: a bounded linear update (see Algorithm.linear_update),
    # written in one pass from the center.
    linear_update = True
    writes_all = True

    _last: np.ndarray
    _layout: Layout
    _worker_chain: tuple[Transform, ...]
    _server_chain: tuple[Transform, ...]
    _worker_states: list[Any] | None = None
    _server_states: list[Any]

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self._worker_chain = check_chain(self.worker_transforms())
        self._server_chain = check_chain(self.server_transforms())
        for transform in self._worker_chain:
            if transform.server_only:
                raise AlgorithmError(
                    f"algorithm {self.name!r}: {transform!r} needs the server's commits; "
                    "put it among the server transforms"
                )
        if self.synchronous and any(t.server_only for t in self._server_chain):
            raise AlgorithmError(
                f"algorithm {self.name!r}: a synchronous round has no single staleness; "
                f"{[t for t in self._server_chain if t.server_only]} work on asynchronous commits"
            )

    def worker_transforms(self) -> Sequence[Transform]:
        """What each delta goes through before it is committed (none by default)."""
        return ()

    def server_transforms(self) -> Sequence[Transform]:
        """What a round's sum goes through before the center adds it (none by default)."""
        return ()

    def delta_scale(self) -> float:
        """Factor applied to the local change before it is committed."""
        return 1.0

    # -- worker side ---------------------------------------------------------------------

    def initial_worker_state(self, layout: Layout) -> State:
        """The worker transforms' initial states."""
        return tuple(t.init(layout) for t in self._worker_chain)

    def worker_state(self) -> State:
        """The worker transforms' states now."""
        return () if self._worker_states is None else tuple(self._worker_states)

    def restore_worker_state(self, state: State) -> None:
        """Continue the worker transforms from a previous attempt's states."""
        self._worker_states = list(state)

    def worker_start(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Pull the center and remember it as the reference for the first delta."""
        self._layout = server.layout
        if self._worker_states is None:
            self._worker_states = list(self.initial_worker_state(self._layout))
        self._last = server.pull()
        return self._last.copy()

    def _delta(self, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        delta: np.ndarray = np.subtract(weights, self._last, out=out, dtype=np.float32)
        scale = self.delta_scale()
        if scale != 1.0:
            delta *= np.float32(scale)
        if self._worker_chain:
            assert self._worker_states is not None
            context = Context(self._layout, weights=self._last)
            delta = run_chain(self._worker_chain, delta, self._worker_states, context)
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

    # -- server side ---------------------------------------------------------------------

    def server_start(self, layout: Layout) -> None:
        """Make the server transforms' states."""
        self._layout = layout
        self._server_states = [t.init(layout) for t in self._server_chain]

    def server_state(self) -> State:
        """The server transforms' states."""
        return tuple(self._server_states)

    def restore_server_state(self, state: State) -> None:
        """Continue the server transforms from a checkpoint's states."""
        self._server_states = list(state)

    def promises_linear_update(self) -> bool:
        """Adding the round is linear; clipping or taking a sign first is not."""
        return self.linear_update and all(t.bounded_linear for t in self._server_chain)

    def elementwise_server(self) -> bool:
        """Whether every server transform works element by element."""
        return all(t.elementwise for t in self._server_chain)

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """``out = center + chain(sum of the round)``."""
        if not self._server_chain:
            sum_onto(out, center, updates)
            return
        total = updates[0]
        sum_into(total, updates[1:])
        context = Context(self._layout, weights=center, metas=tuple(metas))
        total = run_chain(self._server_chain, total, self._server_states, context)
        np.add(center, total, out=out)


def delta_rule(
    name: str,
    doc: str,
    *,
    worker: Chain = (),
    server: Chain = (),
    synchronous: bool = False,
    hyperparameters: Mapping[str, Hyperparameter] | None = None,
) -> type[DeltaAlgorithm]:
    """A :class:`DeltaAlgorithm` made of transforms: the shortest way to write a rule.

    Args:
        name: the registry name (short, lower case).
        doc: the rule's docstring (what it does, where it comes from).
        worker: what each delta goes through before it is committed: a transform, a
            sequence of them, or a function of the rule (read its hyperparameters as
            attributes) returning them.
        server: what the sum of a round (one commit, for an asynchronous rule) goes through
            before the center adds it, in the same forms.
        synchronous: whether the server waits for every worker's commit (a round).
        hyperparameters: the rule's own, by name (``communication_window``,
            ``commit_dtype`` and ``pull_dtype`` come with every rule).

    Returns:
        The class, ready to register (or to name in an entry point: assign it to a module
        attribute).

    Example::

        ClippedDownpour = delta_rule(
            "clipped-downpour", "DOWNPOUR whose server clips each tensor of a commit.",
            server=lambda rule: clip_tensor_norm(rule.max_norm),
            hyperparameters={"max_norm": Hyperparameter(1.0, float, "largest tensor norm")},
        )
    """
    words = [word for word in re.split(r"[^0-9A-Za-z]+", name) if word]
    class_name = "".join(word[:1].upper() + word[1:] for word in words) or "Rule"
    caller = sys._getframe(1).f_globals.get("__name__", __name__)
    body: dict[str, Any] = {
        "__doc__": doc,
        "__module__": caller,
        "__qualname__": class_name,
        "name": name,
        "synchronous": synchronous,
        "hyperparameters": dict(hyperparameters or {}),
        "worker_transforms": _chain_method(worker, "worker"),
        "server_transforms": _chain_method(server, "server"),
    }
    return type(class_name, (DeltaAlgorithm,), body)


Chain = Transform | Sequence[Transform] | Callable[[Any], Transform | Sequence[Transform]]
"""What :func:`delta_rule` takes for a side: transforms, or a function of the rule that
returns them."""


def _chain_method(chain: Chain, side: str) -> Callable[[DeltaAlgorithm], Sequence[Transform]]:
    def transforms(self: DeltaAlgorithm) -> Sequence[Transform]:
        made = chain(self) if callable(chain) and not isinstance(chain, Transform) else chain
        return check_chain(made)

    transforms.__doc__ = f"The {side} transforms."
    return transforms


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

    # center + e (or + the sum of a round's e_i): a bounded linear update, in one pass.
    linear_update = True
    writes_all = True

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

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """``out = center + sum_i e_i`` (synchronously, the paper's beta = p * alpha)."""
        sum_onto(out, center, updates)


class AsyncElasticAlgorithm(ElasticAlgorithm):
    """Asynchronous elastic exchange: pull, move both ways, commit (Algorithm 1 of the paper)."""

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Pull the current center, take the elastic step locally, commit it to the center."""
        center = server.pull(out=self._center)
        server.commit(self.elastic_move(weights, center))
        return weights
