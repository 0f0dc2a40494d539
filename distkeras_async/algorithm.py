"""The algorithm contract: a worker rule and a server rule on flat float32 vectors.

An algorithm is a small class. The *worker rule* decides what a worker does with its local
weights every ``communication_window`` local steps (what it commits, whether it pulls, how
its own weights change); the *server rule* decides how a commit, or a synchronous round of
commits, changes the center variable. Both are plain numpy: no Keras, no sockets, no
asyncio, so each rule can be checked against hand-computed numbers.

The same class is instantiated once on the server and once in every worker; the instances
share hyperparameters (the server sends them in its welcome) but not state.

Example, a complete asynchronous algorithm::

    class HalfDownpour(DeltaAlgorithm):
        '''DOWNPOUR that applies half of every worker's change.'''
        name = "half-downpour"

        def server_apply(self, center, update, meta):
            center += 0.5 * update
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from distkeras_async.errors import AlgorithmError, HyperparameterError


class ServerHandle(Protocol):
    """What a worker rule may call (``worker.client.ParameterServerClient`` is one).

    ``pull`` and ``commit_pull`` return the center as one flat float32 vector; when ``out``
    is given, the center is received into it and ``out`` is returned.
    """

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


@dataclass(frozen=True, slots=True)
class Hyperparameter:
    """Declaration of one hyperparameter: default, type, constraint and meaning."""

    default: Any
    kind: type = float
    doc: str = ""
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    def validate(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to ``kind``, or raise naming ``name``."""
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool):
                raise HyperparameterError(
                    f"hyperparameter {name!r} must be one of {list(self.choices)}, got {value!r}"
                )
            return value
        if self.kind is bool:
            if not isinstance(value, bool | np.bool_):
                raise HyperparameterError(f"hyperparameter {name!r} must be a bool, got {value!r}")
            return bool(value)
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise HyperparameterError(f"hyperparameter {name!r} must be an int, got {value!r}")
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise HyperparameterError(
                    f"hyperparameter {name!r} must be a number, got {value!r}"
                )
            try:
                value = float(value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise HyperparameterError(f"hyperparameter {name!r} must be finite, got {value!r}")
        elif not isinstance(value, self.kind):
            raise HyperparameterError(
                f"hyperparameter {name!r} must be {self.kind.__name__}, got {value!r}"
            )
        if self.minimum is not None:
            too_small = value <= self.minimum if self.exclusive_minimum else value < self.minimum
            if too_small:
                bound = ">" if self.exclusive_minimum else ">="
                raise HyperparameterError(
                    f"hyperparameter {name!r} must be {bound} {self.minimum}, got {value!r}"
                )
        if self.maximum is not None and value > self.maximum:
            raise HyperparameterError(
                f"hyperparameter {name!r} must be <= {self.maximum}, got {value!r}"
            )
        return value


def positive(default: float, doc: str, kind: type = float) -> Hyperparameter:
    """A hyperparameter that must be strictly positive."""
    return Hyperparameter(default, kind, doc, minimum=0, exclusive_minimum=True)


class Algorithm:
    """Base class of every distributed update rule; subclass it to write a new one.

    Subclasses set ``name``, ``synchronous`` and any extra ``hyperparameters`` (merged with the
    base class's, which declares ``communication_window``), and override the rules.
    Asynchronous algorithms implement :meth:`server_apply`; synchronous ones
    :meth:`server_apply_round`.

    Attributes:
        name: the registry name (short, lower case).
        synchronous: whether the server applies commits in rounds of every live worker.
        allow_nonfinite: whether updates may contain NaN or infinity (the server rejects
            such commits otherwise, before they touch the center).
        linear_update: a promise that the server rule is a bounded linear update: the next
            center is ``a * center + sum_i b_i * update_i`` elementwise, with ``|a| <= 1``
            and every ``|b_i| <= 1``, that its out-of-place form may be called with ``out``
            being ``center``, and that it cannot raise for finite inputs of the layout's
            size. The server then applies it in place when it can prove the result finite,
            saving a pass over the model. A subclass that overrides the server rule below
            the class that made the promise does not inherit it.
        hyperparameters: name -> declaration, including the inherited ones.
    """

    name: ClassVar[str] = ""
    synchronous: ClassVar[bool] = False
    allow_nonfinite: ClassVar[bool] = False
    linear_update: ClassVar[bool] = False
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

    # -- server rule ---------------------------------------------------------------------

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        """Apply one asynchronous commit to ``center`` in place.

        ``center`` is the server's *next* center, already holding a copy of the current one:
        if the rule raises, or leaves a NaN or an infinity, the server discards it and the
        published center is unchanged. ``update`` is a received buffer the rule may modify
        in place during the call (but not keep: the server reuses it).
        """
        raise NotImplementedError(f"{type(self).__name__} is not asynchronous")

    def server_apply_round(
        self, center: np.ndarray, updates: Sequence[np.ndarray], metas: Sequence[UpdateMeta]
    ) -> None:
        """Apply one synchronous round (one commit per live worker) to ``center`` in place.

        As for :meth:`server_apply`, ``center`` holds a copy that is published only if the
        rule returns and the result is finite.
        """
        raise NotImplementedError(f"{type(self).__name__} is not synchronous")

    def server_update(
        self, out: np.ndarray, center: np.ndarray, update: np.ndarray, meta: UpdateMeta
    ) -> None:
        """Out-of-place :meth:`server_apply`: write the next center into ``out``.

        ``center`` is the published center: read it, never write it. The default copies it
        into ``out`` and calls :meth:`server_apply`; a rule that can compute the result in
        one pass (``np.add(center, update, out=out)``) overrides this to save that copy. The
        server uses an override only where it is at least as specific as the class's
        :meth:`server_apply`, so a subclass that overrides only :meth:`server_apply` is
        never bypassed.
        """
        np.copyto(out, center)
        self.server_apply(out, update, meta)

    def server_update_round(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """Out-of-place :meth:`server_apply_round` (see :meth:`server_update`)."""
        np.copyto(out, center)
        self.server_apply_round(out, updates, metas)

    # -- what the server calls -----------------------------------------------------------

    def apply_update(
        self, out: np.ndarray, center: np.ndarray, update: np.ndarray, meta: UpdateMeta
    ) -> None:
        """The server's entry point for an asynchronous commit: the fastest valid form."""
        if _specific(type(self), "server_update", "server_apply"):
            self.server_update(out, center, update, meta)
        else:
            Algorithm.server_update(self, out, center, update, meta)

    def apply_round(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        """The server's entry point for a synchronous round: the fastest valid form."""
        if _specific(type(self), "server_update_round", "server_apply_round"):
            self.server_update_round(out, center, updates, metas)
        else:
            Algorithm.server_update_round(self, out, center, updates, metas)

    @classmethod
    def declares_linear_update(cls) -> bool:
        """Whether :attr:`linear_update` holds for this class's own server rules.

        The promise counts only where it was made at or below every server-rule method the
        class uses, so overriding ``server_apply`` in a subclass withdraws it.
        """
        if not cls.linear_update:
            return False
        names = (
            ("server_apply_round", "server_update_round")
            if cls.synchronous
            else ("server_apply", "server_update")
        )
        promise = _owner(cls, "linear_update")
        return all(issubclass(promise, _owner(cls, name)) for name in names)

    @classmethod
    def check_contract(cls) -> None:
        """Check that the class can serve as an algorithm; raise AlgorithmError naming it.

        ``synchronous`` must be a bool, and the class must define the server rule of its
        kind (``server_apply`` or ``server_update`` for asynchronous algorithms, the
        ``_round`` forms for synchronous ones).
        """
        label = f"algorithm {cls.name!r} ({cls.__module__}.{cls.__qualname__})"
        if not isinstance(cls.synchronous, bool):
            raise AlgorithmError(f"{label}: 'synchronous' must be True or False")
        names = (
            ("server_apply_round", "server_update_round")
            if cls.synchronous
            else ("server_apply", "server_update")
        )
        if all(_owner(cls, name) is Algorithm for name in names):
            kind = "synchronous" if cls.synchronous else "asynchronous"
            raise AlgorithmError(f"{label} is {kind} but defines neither {' nor '.join(names)}")


def _owner(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


_SPECIFIC: dict[tuple[type, str], bool] = {}


def _specific(cls: type, fused: str, in_place: str) -> bool:
    """Whether ``cls``'s ``fused`` method is defined at or below its ``in_place`` method."""
    key = (cls, fused)
    found = _SPECIFIC.get(key)
    if found is None:
        found = _SPECIFIC[key] = issubclass(_owner(cls, fused), _owner(cls, in_place))
    return found
