"""The algorithm contract: a worker rule and a server rule on flat float32 vectors.

An algorithm is a small class. The *worker rule* decides what a worker does with its local
weights every ``communication_window`` local steps (what it commits, whether it pulls, how
its own weights change); the *server rule* decides how a commit, or a synchronous round of
commits, changes the center variable. Both are plain numpy: no Keras, no sockets, no
asyncio, so each rule can be checked against hand-computed numbers.

The same class is instantiated once on the server and once in every worker; the instances
share hyperparameters (the server sends them in its welcome) but not state.

Example, a complete asynchronous algorithm (most are shorter still, built from transforms
with :func:`~distkeras_async.rules.delta_rule`)::

    class HalfDownpour(DeltaAlgorithm):
        '''DOWNPOUR that applies half of every worker's change.'''
        name = "half-downpour"

        def server_update(self, out, center, updates, metas):
            out += 0.5 * updates[0]   # out holds a copy of the center
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from distkeras_async.errors import AlgorithmError, HyperparameterError
from distkeras_async.hyperparameters import Hyperparameter, positive
from distkeras_async.state import State, flatten_state, unflatten_state

if TYPE_CHECKING:  # the layout is handed to rules; the contract imports nothing of the wire
    from distkeras_async.layout import Layout


# The contract a plugin imports from one place: its hyperparameters' and its state's helpers
# are defined beside it and named here too.
__all__ = [
    "COMMIT_DTYPES",
    "Algorithm",
    "Hyperparameter",
    "LocalStep",
    "ServerHandle",
    "State",
    "UpdateMeta",
    "flatten_state",
    "positive",
    "unflatten_state",
]


class ServerHandle(Protocol):
    """What a worker rule may call (``worker.client.ParameterServerClient`` is one).

    ``pull`` and ``commit_pull`` return the center as one flat float32 vector; when ``out``
    is given, the center is received into it and ``out`` is returned.
    """

    @property
    def layout(self) -> Layout:
        """The model's tensors (what a per-tensor transform splits an update by)."""
        ...

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        """Fetch the current center variable."""
        ...

    def commit(self, update: np.ndarray) -> None:
        """Send an update for the server rule."""
        ...

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Send an update and receive the center after it was applied, in one round trip."""
        ...


# The dtypes a commit may travel in (distkeras_async.wire.compression has their codecs; the
# contract names them here because a plugin may import nothing of the wire).
COMMIT_DTYPES = ("float32", "float16", "bfloat16", "int8")

LocalStep = Callable[[np.ndarray], np.ndarray]
"""One local optimizer step from the given flat weights; returns the weights after it as a
new array and leaves its argument unchanged."""


@dataclass(frozen=True, slots=True)
class UpdateMeta:
    """What the server knows about a commit when a rule applies it.

    Attributes:
        worker: the committing worker's id.
        pulled_version: the server version when that worker last received the center.
        version: the server version now, before this update is applied.
        attempt: the worker's Spark task attempt.
        seq: the message's sequence number.
    """

    worker: int
    pulled_version: int
    version: int
    attempt: int = 0
    seq: int = 0

    @property
    def staleness(self) -> int:
        """How many updates were applied since the worker last pulled."""
        return max(0, self.version - self.pulled_version)


class Algorithm:
    """Base class of every distributed update rule; subclass it to write a new one.

    Subclasses set ``name``, ``synchronous`` and any extra ``hyperparameters`` (merged with the
    base class's, which declares ``communication_window``), and define the worker rule
    (:meth:`worker_exchange`, optionally :meth:`worker_start`, :meth:`worker_finish`,
    :meth:`worker_step`) and the server rule (:meth:`server_update`, one form for a round of
    any size). Most rules need none of this: :func:`distkeras_async.rules.delta_rule` builds
    one from transforms.

    Attributes:
        name: the registry name (short, lower case).
        synchronous: whether the server applies commits in rounds of every live worker.
        allow_nonfinite: whether updates may contain NaN or infinity (the server rejects
            such commits otherwise, before they touch the center).
        writes_all: the server rule writes every element of ``out`` from the center and the
            updates, so the server need not copy the center into ``out`` first.
        linear_update: a promise that the server rule is a bounded linear update: the next
            center is ``a * center + sum_i b_i * update_i`` elementwise, with ``|a| <= 1``
            and every ``|b_i| <= 1``, that it may be called with ``out`` being ``center``,
            and that it cannot raise for finite inputs of the layout's size. The server then
            applies it in place when it can prove the result finite, saving a pass over the
            model. A class that defines :meth:`server_update` makes its own promises: it
            inherits neither ``linear_update`` nor ``writes_all``.
        hyperparameters: name -> declaration, including the inherited ones.
    """

    name: ClassVar[str] = ""
    synchronous: ClassVar[bool] = False
    allow_nonfinite: ClassVar[bool] = False
    linear_update: ClassVar[bool] = False
    writes_all: ClassVar[bool] = False
    hyperparameters: ClassVar[Mapping[str, Hyperparameter]] = {
        "communication_window": positive(
            5, "local steps between two exchanges with the parameter server", kind=int
        ),
        "commit_dtype": Hyperparameter(
            "float32",
            str,
            "the dtype a worker's commit travels in: float32, float16, bfloat16, or int8 with "
            "one scale per tensor; the worker adds what rounding lost to its next commit",
            choices=COMMIT_DTYPES,
        ),
        "pull_dtype": Hyperparameter(
            "float32",
            str,
            "the dtype the center travels back to a worker in: float32, or after the first "
            "reply of a connection its change since the last one in float16, bfloat16 or "
            "int8; the server sends what rounding lost with the next reply",
            choices=COMMIT_DTYPES,
        ),
    }

    communication_window: int
    commit_dtype: str
    pull_dtype: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged: dict[str, Hyperparameter] = {}
        for base in reversed(cls.__mro__[1:]):
            merged.update(getattr(base, "hyperparameters", {}))
        merged.update(cls.__dict__.get("hyperparameters", {}))
        cls.hyperparameters = merged
        if "server_update" in cls.__dict__:
            # A new server rule makes its own promises: a parent's would not hold for it.
            for promise in ("linear_update", "writes_all"):
                if promise not in cls.__dict__:
                    setattr(cls, promise, False)

    def __init__(self, **hyperparameters: Any) -> None:
        unknown = sorted(set(hyperparameters) - set(self.hyperparameters))
        if unknown:
            raise HyperparameterError(
                f"unknown hyperparameter {unknown[0]!r} for algorithm {self.name!r}; "
                f"valid: {sorted(self.hyperparameters)}"
            )
        for key, spec in self.hyperparameters.items():
            value = hyperparameters.get(key, spec.default)
            setattr(self, key, spec.validate(key, value))
        self.validate()

    def validate(self) -> None:
        """Check constraints between hyperparameters; raise HyperparameterError if violated."""

    def validate_workers(self, num_workers: int) -> None:
        """Check constraints that depend on the number of workers (the server calls this)."""

    @property
    def settings(self) -> dict[str, Any]:
        """The hyperparameter values, as sent to workers in the server's welcome."""
        return {key: getattr(self, key) for key in self.hyperparameters}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"

    # -- worker rule ---------------------------------------------------------------------

    def worker_start(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Called once before training; returns the weights to start from.

        The default pulls the center, so every worker starts from the same point.
        """
        return server.pull()

    def worker_exchange(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Called every ``communication_window`` local steps; returns the new local weights.

        ``weights`` is a flat float32 copy of the local weights that the rule may modify in
        place and return; the worker reuses that buffer for its next exchange, so a rule
        keeps a copy, never the array itself. The returned array is the rule's to keep no
        longer.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define worker_exchange")

    def worker_finish(self, weights: np.ndarray, server: ServerHandle) -> np.ndarray:
        """Called once after the last local step, so no local work is lost.

        The default performs one last exchange.
        """
        return self.worker_exchange(weights, server)

    def worker_step(self, weights: np.ndarray, local_step: LocalStep) -> np.ndarray:
        """One local optimizer step; override to act on *every* step (EAMSGD's momentum).

        The default is the plain local step. The worker loop only calls this (and only
        flattens the weights every step) when a subclass overrides it.
        """
        return local_step(weights)

    @classmethod
    def acts_every_step(cls) -> bool:
        """Whether this algorithm overrides :meth:`worker_step`."""
        return cls.worker_step is not Algorithm.worker_step

    def lagging_center_hint(self, num_workers: int) -> str:
        """What to change when the center kept little of what the workers learned.

        The trainer's learning check quotes this in its warning; an algorithm whose rule has
        a step size of its own says which hyperparameter sets it.
        """
        return (
            f"Exchange more often: communication_window={self.communication_window} local "
            "steps pass between exchanges; try a smaller one."
        )

    # -- worker state -------------------------------------------------------------------

    def initial_worker_state(self, layout: Layout) -> State:
        """The worker rule's state before its first exchange (none by default).

        A rule whose worker keeps state across exchanges (a momentum, a residual) returns it
        here, as a tuple of numpy arrays (nested tuples allowed), and returns its current
        value from :meth:`worker_state`. The server computes this too, to know what a
        worker's state looks like on the wire.
        """
        return ()

    def worker_state(self) -> State:
        """The worker rule's state now, structured as :meth:`initial_worker_state`'s.

        It travels with every commit, for a retried task to resume with
        (:meth:`restore_worker_state`).
        """
        return ()

    def restore_worker_state(self, state: State) -> None:
        """Continue from ``state``, a previous attempt's at its last accepted commit.

        Called before :meth:`worker_start` on a retried task that resumes. The default has
        no state to restore.
        """
        if flatten_state(state):
            raise AlgorithmError(f"algorithm {self.name!r} keeps no worker state")

    # -- server rule ---------------------------------------------------------------------

    def server_start(self, layout: Layout) -> None:
        """Called once on the server before the first update (to make the rule's state).

        ``layout`` is the center's, or on one shard of a sharded server that shard's pieces.
        """

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """Write the next center into ``out``: the one server rule.

        ``updates`` is a round: every live worker's commit for a synchronous algorithm, one
        commit for an asynchronous one; ``metas`` say who committed each and how stale it is.
        ``center`` is the published center: read it, never write it. ``out`` holds a copy of
        it on entry unless the class declares :attr:`writes_all` (then the rule writes every
        element of ``out``, saving that copy). The updates are received buffers the rule may
        change during the call, but not keep. If the rule raises, or leaves a NaN or an
        infinity, the server discards ``out`` and the published center is unchanged.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define server_update")

    def server_state(self) -> State:
        """The server rule's state (saved in checkpoints); none by default."""
        return ()

    def restore_server_state(self, state: State) -> None:
        """Continue from ``state`` (a checkpoint's), after :meth:`server_start`."""
        if flatten_state(state):
            raise AlgorithmError(f"algorithm {self.name!r} keeps no server state")

    def promises_linear_update(self) -> bool:
        """Whether this instance's server rule keeps the :attr:`linear_update` promise."""
        return self.linear_update

    def elementwise_server(self) -> bool:
        """Whether each element of the next center depends only on the same elements.

        Only such a rule runs on a sharded server, where each shard applies it to its own
        slice of the center. A rule that overrides :meth:`server_update` is taken at its
        word (the docs say that a shard's rule sees its slice); chains of transforms answer
        exactly.
        """
        return True

    @classmethod
    def check_contract(cls) -> None:
        """Check that the class can serve as an algorithm; raise AlgorithmError naming it.

        The registry runs this when a class is registered or loaded, and the test kit
        (:func:`distkeras_async.testing.check_algorithm`) runs it first: ``name`` a
        non-empty string, ``synchronous``, ``writes_all`` and ``linear_update`` bools, a
        server rule and a worker rule defined.
        """
        label = f"algorithm {cls.name!r} ({cls.__module__}.{cls.__qualname__})"
        if not isinstance(cls.name, str) or not cls.name:
            raise AlgorithmError(f"{label}: set a non-empty class attribute 'name'")
        for flag in ("synchronous", "writes_all", "linear_update", "allow_nonfinite"):
            if not isinstance(getattr(cls, flag), bool):
                raise AlgorithmError(f"{label}: {flag!r} must be True or False")
        old = [name for name in _VERSION_2_RULES if hasattr(cls, name)]
        if old:
            raise AlgorithmError(
                f"{label} defines {old[0]}, a server rule of contract version 2 that the "
                "server no longer calls: define server_update(out, center, updates, metas), "
                "which takes a round (an asynchronous commit is a round of one)"
            )
        if cls.server_update is Algorithm.server_update:
            raise AlgorithmError(f"{label} does not define server_update (the server rule)")
        if cls.worker_exchange is Algorithm.worker_exchange:
            raise AlgorithmError(f"{label} does not define worker_exchange (the worker rule)")


# The server rule's forms before contract version 3, refused with a pointer to the new one.
_VERSION_2_RULES = ("server_apply", "server_apply_round", "server_update_round")
