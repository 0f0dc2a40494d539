"""A kit for plugin authors: an in-memory server and the checks every algorithm must pass.

The project runs the same checks over every registered algorithm
(``tests/test_algorithm_conformance.py``); a plugin runs them over its own in its test suite::

    from distkeras_async.testing import FakeServer, check_algorithm

    def test_my_rule_conforms():
        check_algorithm(MyRule)

    def test_my_rule_by_hand():
        server = FakeServer(MyRule(), np.zeros(4, np.float32))
        weights = MyRule().worker_start(np.zeros(4, np.float32), server)
        ...

Each check raises ``AssertionError`` saying which property failed. Nothing here needs Spark,
Keras or a socket.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import msgpack
import numpy as np

from distkeras_async.algorithm import (
    Algorithm,
    Hyperparameter,
    State,
    UpdateMeta,
    flatten_state,
    unflatten_state,
)
from distkeras_async.errors import AlgorithmError, HyperparameterError
from distkeras_async.layout import Layout


class FakeServer:
    """A :class:`~distkeras_async.algorithm.ServerHandle` in memory, for one worker.

    It applies the algorithm's own server rule to ``center`` on every commit (a synchronous
    algorithm's rounds have just this worker), counts versions and staleness as the real
    server does, and keeps a copy of every update in :attr:`updates`.

    Args:
        algorithm: the server's instance of the algorithm (not the worker's: they share no
            state).
        center: the initial center (copied, as float32).
        layout: the model's tensors (default: one tensor, the whole center).
    """

    def __init__(
        self, algorithm: Algorithm, center: np.ndarray, layout: Layout | None = None
    ) -> None:
        self.algorithm = algorithm
        self.center = np.asarray(center, np.float32).copy()
        self._layout = Layout.of([self.center]) if layout is None else layout
        assert self._layout.size == self.center.size, "the layout must cover the center"
        algorithm.server_start(self._layout)
        self.version = 0
        self.pulled_version = 0
        self.updates: list[np.ndarray] = []

    @property
    def layout(self) -> Layout:
        """The model's tensors."""
        return self._layout

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        """The center (into ``out`` when given)."""
        self.pulled_version = self.version
        if out is None:
            return self.center.copy()
        assert out.dtype == np.float32 and out.shape == self.center.shape, (
            f"pull(out=...) needs a float32 array of shape {self.center.shape}"
        )
        np.copyto(out, self.center)
        return out

    def commit(self, update: np.ndarray) -> None:
        """Apply ``update`` with the server rule."""
        assert isinstance(update, np.ndarray), f"an update must be an ndarray, got {update!r}"
        assert update.dtype == np.float32, f"an update must be float32, got {update.dtype}"
        assert update.shape == self.center.shape, (
            f"an update must have shape {self.center.shape}, got {update.shape}"
        )
        self.updates.append(update.copy())
        meta = UpdateMeta(0, self.pulled_version, self.version)
        self.center = next_center(self.algorithm, self.center, [update], [meta])
        self.version += 1

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Commit, then pull, as one exchange."""
        self.commit(update)
        return self.pull(out)


def f32(*values: float) -> np.ndarray:
    """A float32 vector of ``values``."""
    return np.array(values, dtype=np.float32)


def next_center(
    algorithm: Algorithm,
    center: np.ndarray,
    updates: Sequence[np.ndarray],
    metas: Sequence[UpdateMeta],
) -> np.ndarray:
    """What the server publishes after ``algorithm.server_update`` on one round.

    ``out`` is a copy of ``center``, or (for a rule that declares ``writes_all``) a buffer
    full of NaN, so a rule that breaks that promise leaves a NaN behind. The updates are
    copied (the rule may change them).
    """
    out = np.full_like(center, np.nan) if algorithm.writes_all else center.copy()
    algorithm.server_update(out, center, [u.copy() for u in updates], metas)
    return out


def apply_updates(
    algorithm: Algorithm, center: np.ndarray, updates: Sequence[np.ndarray]
) -> np.ndarray:
    """``updates`` applied to ``center``: one round if synchronous, else in turn.

    The rule is started first (:meth:`~distkeras_async.algorithm.Algorithm.server_start`,
    with ``center`` as one tensor), so its server state begins afresh.
    """
    algorithm.server_start(Layout.of([center]))
    if algorithm.synchronous:
        metas = [UpdateMeta(w, 0, 0) for w in range(len(updates))]
        return next_center(algorithm, center, updates, metas)
    for version, update in enumerate(updates):
        center = next_center(algorithm, center, [update], [UpdateMeta(0, version, version)])
    return center


def state_round_trip(state: State, template: State) -> State:
    """``state`` through the form checkpoints and the wire keep it in.

    That is flat arrays in an ``.npz`` file, rebuilt in ``template``'s structure.
    """
    stream = io.BytesIO()
    arrays = flatten_state(state)
    np.savez(stream, *arrays)
    stream.seek(0)
    with np.load(stream, allow_pickle=False) as loaded:
        restored = [loaded[f"arr_{i}"] for i in range(len(arrays))]
    return unflatten_state(template, restored)


# -- the checks ------------------------------------------------------------------------------


def check_declarations(cls: type[Algorithm]) -> None:
    """Name, docstring, mode, hyperparameters: what the registry and the server rely on."""
    assert issubclass(cls, Algorithm), f"{cls!r} is not an Algorithm"
    assert cls.name and cls.name == cls.name.lower() and " " not in cls.name, (
        f"name must be short and lower case, got {cls.name!r}"
    )
    assert cls.__dict__.get("__doc__", "") and cls.__doc__ and cls.__doc__.strip(), (
        f"{cls.__name__} needs a docstring of its own"
    )
    assert type(cls.synchronous) is bool and type(cls.allow_nonfinite) is bool, (
        "synchronous and allow_nonfinite must be bools"
    )
    for key, spec in cls.hyperparameters.items():
        assert isinstance(spec, Hyperparameter), f"hyperparameter {key!r} is not declared"
        assert key.isidentifier() and key == key.lower(), f"bad hyperparameter name {key!r}"
        assert spec.doc.strip(), f"hyperparameter {key!r} has no doc"
        assert spec.validate(key, spec.default) == spec.default, (
            f"the default of {key!r} does not pass its own validation"
        )
    algorithm = cls()
    for key, spec in cls.hyperparameters.items():
        assert getattr(algorithm, key) == spec.default, f"{key!r} is not set to its default"
    settings = algorithm.settings
    assert set(settings) == set(cls.hyperparameters), "settings must list every hyperparameter"
    for key, value in settings.items():
        assert type(value) in (int, float, bool, str), (
            f"setting {key!r} must be an int, float, bool or str to travel, got {type(value)}"
        )
    assert msgpack.unpackb(msgpack.packb(settings)) == settings, "settings must survive msgpack"
    assert cls(**settings).settings == settings, "the settings a server sends must rebuild it"
    try:
        cls(no_such_knob=1)
    except HyperparameterError:
        pass
    else:
        raise AssertionError("an unknown hyperparameter must be refused")
    try:
        cls.check_contract()  # what the registry checks when it loads or registers a class
    except AlgorithmError as exc:
        raise AssertionError(str(exc)) from exc


def check_server_rule(cls: type[Algorithm]) -> None:
    """The server rule keeps dtype and shape, keeps its promises, and is deterministic.

    ``out`` is given as a copy of the center, or full of NaN for a rule that declares
    ``writes_all`` (which must then write every element); a rule that promises a bounded
    linear update must give the same result with ``out`` being ``center`` and stay within
    ``max|center| + sum max|update|``.
    """
    rng = np.random.default_rng(7)
    layout = Layout.of([np.zeros((8, 6), np.float32), np.zeros(16, np.float32)])
    center = rng.normal(size=64).astype(np.float32)
    updates = [rng.normal(size=64).astype(np.float32) for _ in range(3 if cls.synchronous else 1)]
    metas = [UpdateMeta(w, 0, 0) for w in range(len(updates))]
    results = []
    for _ in range(2):
        algorithm = cls()
        algorithm.server_start(layout)
        published = center.copy()
        result = next_center(algorithm, published, updates, metas)
        np.testing.assert_array_equal(published, center, err_msg="the rule wrote the center")
        results.append(result)
    result = results[0]
    assert result.dtype == np.float32 and result.shape == (64,), (
        "the server rule must keep the center a float32 vector"
    )
    assert np.all(np.isfinite(result)), (
        "the server rule left NaN in out (a rule that declares writes_all must write all)"
    )
    np.testing.assert_array_equal(results[1], result, err_msg="the server rule is not repeatable")
    algorithm = cls()
    algorithm.server_start(layout)
    if algorithm.promises_linear_update():
        aliased = center.copy()
        algorithm.server_update(aliased, aliased, [u.copy() for u in updates], metas)
        np.testing.assert_array_equal(
            aliased, result, err_msg="a linear update must allow out to be the center"
        )
        bound = np.max(np.abs(center)) + sum(np.max(np.abs(u)) for u in updates)
        assert np.max(np.abs(result)) <= bound * (1 + 1e-6), (
            "the rule promises a bounded linear update but left the bound"
        )


def check_state(cls: type[Algorithm]) -> None:
    """Rule state survives the round trip through a checkpoint (or a commit, to a retry).

    A worker restored from another's state commits what that worker would have committed
    next, and a server restored from another's state publishes what it would have.
    """
    layout = Layout.of([np.zeros((2, 2), np.float32)])
    rng = np.random.default_rng(11)
    moves = [rng.normal(size=4).astype(np.float32) for _ in range(3)]
    identity: Callable[[np.ndarray], np.ndarray] = lambda w: w.copy()  # noqa: E731
    first = cls(communication_window=1)
    server = FakeServer(cls(communication_window=1), f32(0.5, -1, 2, 0.25), layout)
    weights = first.worker_start(np.zeros(4, np.float32), server)
    for move in moves[:2]:
        if first.acts_every_step():
            weights = first.worker_step(weights + move, identity)
        weights = first.worker_exchange(weights + move, server)
    saved = state_round_trip(first.worker_state(), cls().initial_worker_state(layout))
    second = cls(communication_window=1)
    second.restore_worker_state(saved)
    twin = FakeServer(cls(communication_window=1), server.center, layout)
    second.worker_start(np.zeros(4, np.float32), twin)
    trained = weights + moves[2]
    if first.acts_every_step():
        np.testing.assert_array_equal(
            second.worker_step(trained.copy(), identity),
            first.worker_step(trained.copy(), identity),
            err_msg="a worker restored from the saved state stepped differently",
        )
    first.worker_exchange(trained.copy(), server)
    second.worker_exchange(trained.copy(), twin)
    np.testing.assert_array_equal(
        twin.updates[-1],
        server.updates[-1],
        err_msg="a worker restored from the saved state committed something else",
    )

    updates = [rng.normal(size=4).astype(np.float32) for _ in range(2 if cls.synchronous else 1)]
    metas = [UpdateMeta(w, 0, 0) for w in range(len(updates))]
    original = cls()
    original.server_start(layout)
    center = next_center(original, f32(1, 2, 3, 4), updates, metas)
    restored = cls()
    restored.server_start(layout)
    restored.restore_server_state(
        state_round_trip(original.server_state(), restored.server_state())
    )
    np.testing.assert_array_equal(
        next_center(restored, center, updates, metas),
        next_center(original, center, updates, metas),
        err_msg="a server restored from the saved state published another center",
    )


def check_worker_rule(cls: type[Algorithm]) -> None:
    """An idle worker leaves the center where it is; a trained one moves it its way."""
    center = f32(1.5, -2, 0.25, 8)
    algorithm = cls(communication_window=2)
    server = FakeServer(cls(communication_window=2), center)
    weights = algorithm.worker_start(np.zeros(4, np.float32), server)
    assert weights.dtype == np.float32 and weights.shape == (4,), "worker_start's weights"
    np.testing.assert_array_equal(weights, center, err_msg="a worker must start from the center")
    for step in (algorithm.worker_exchange, algorithm.worker_finish):
        weights = step(weights, server)
        np.testing.assert_array_equal(
            server.center, center, err_msg="an idle worker must not move the center"
        )
        np.testing.assert_array_equal(weights, center, err_msg="an idle worker stays put")
    assert server.updates, "the worker rule never committed"

    algorithm = cls(communication_window=2)
    zero = f32(0, 0, 0, 0)
    server = FakeServer(cls(communication_window=2), zero)
    weights = algorithm.worker_start(zero.copy(), server)
    direction = f32(1, -1, 2, 0)
    trained = weights + direction
    if algorithm.acts_every_step():
        identity: Callable[[np.ndarray], np.ndarray] = lambda w: w.copy()  # noqa: E731
        trained = algorithm.worker_step(trained, identity)  # zero gradient
    algorithm.worker_exchange(trained.copy(), server)
    moved = server.center - zero
    assert np.all(np.sign(moved) == np.sign(direction)), (
        f"an exchange must move the center towards the worker: moved {moved}"
    )


def check_algorithm(cls: type[Algorithm]) -> None:
    """Every check of this kit, in turn."""
    check_declarations(cls)
    check_server_rule(cls)
    check_worker_rule(cls)
    check_state(cls)
