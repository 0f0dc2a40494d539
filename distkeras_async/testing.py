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

from collections.abc import Callable, Sequence

import msgpack
import numpy as np

from distkeras_async.algorithm import Algorithm, Hyperparameter, UpdateMeta
from distkeras_async.errors import HyperparameterError


class FakeServer:
    """A :class:`~distkeras_async.algorithm.ServerHandle` in memory, for one worker.

    It applies the algorithm's own server rule to ``center`` on every commit (a synchronous
    algorithm's rounds have just this worker), counts versions and staleness as the real
    server does, and keeps a copy of every update in :attr:`updates`.

    Args:
        algorithm: the server's instance of the algorithm (not the worker's: they share no
            state).
        center: the initial center (copied, as float32).
    """

    def __init__(self, algorithm: Algorithm, center: np.ndarray) -> None:
        self.algorithm = algorithm
        self.center = np.asarray(center, np.float32).copy()
        self.version = 0
        self.pulled_version = 0
        self.updates: list[np.ndarray] = []

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
        if self.algorithm.synchronous:
            self.algorithm.server_apply_round(self.center, [update.copy()], [meta])
        else:
            self.algorithm.server_apply(self.center, update.copy(), meta)
        self.version += 1

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Commit, then pull, as one exchange."""
        self.commit(update)
        return self.pull(out)


def f32(*values: float) -> np.ndarray:
    """A float32 vector of ``values``."""
    return np.array(values, dtype=np.float32)


def apply_updates(
    algorithm: Algorithm, center: np.ndarray, updates: Sequence[np.ndarray]
) -> np.ndarray:
    """``updates`` applied to a copy of ``center``: one round if synchronous, else in turn."""
    result = center.copy()
    if algorithm.synchronous:
        metas = [UpdateMeta(w, 0, 0) for w in range(len(updates))]
        algorithm.server_apply_round(result, [u.copy() for u in updates], metas)
    else:
        for version, update in enumerate(updates):
            algorithm.server_apply(result, update.copy(), UpdateMeta(0, version, version))
    return result


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
    rule = "server_apply_round" if cls.synchronous else "server_apply"
    assert getattr(cls, rule) is not getattr(Algorithm, rule), f"{cls.__name__} lacks {rule}"
    assert cls.worker_exchange is not Algorithm.worker_exchange, "worker_exchange is missing"


def check_server_rule(cls: type[Algorithm]) -> None:
    """The server rule works in place, keeps dtype and shape, and its forms agree.

    ``apply_update``/``apply_round`` (what the server calls) must give the in-place rule's
    result exactly; a rule that promises a bounded linear update must give the same result
    with ``out`` being ``center`` and stay within ``max|center| + sum max|update|``.
    """
    algorithm = cls()
    center = np.linspace(-1, 1, 6, dtype=np.float32)
    original = center
    updates = [np.full(6, 0.5, np.float32), np.arange(6, dtype=np.float32)]
    if algorithm.synchronous:
        metas = [UpdateMeta(0, 0, 0), UpdateMeta(1, 0, 0)]
        algorithm.server_apply_round(center, [u.copy() for u in updates], metas)
    else:
        for update in updates:
            algorithm.server_apply(center, update.copy(), UpdateMeta(0, 0, 0))
    assert center is original, "the server rule must work in place"
    assert center.dtype == np.float32 and center.shape == (6,) and center.flags.c_contiguous, (
        "the server rule must keep the center a contiguous float32 vector"
    )
    rng = np.random.default_rng(7)
    center = rng.normal(size=64).astype(np.float32)
    updates = [rng.normal(size=64).astype(np.float32) for _ in range(3 if cls.synchronous else 1)]
    in_place = center.copy()
    out = np.full_like(center, np.nan)
    aliased = center.copy()
    if cls.synchronous:
        metas = [UpdateMeta(w, 0, 0) for w in range(len(updates))]
        algorithm.server_apply_round(in_place, [u.copy() for u in updates], metas)
        algorithm.apply_round(out, center.copy(), [u.copy() for u in updates], metas)
        if cls.declares_linear_update():
            algorithm.apply_round(aliased, aliased, [u.copy() for u in updates], metas)
    else:
        meta = UpdateMeta(0, 0, 0)
        algorithm.server_apply(in_place, updates[0].copy(), meta)
        algorithm.apply_update(out, center.copy(), updates[0].copy(), meta)
        if cls.declares_linear_update():
            algorithm.apply_update(aliased, aliased, updates[0].copy(), meta)
    np.testing.assert_array_equal(
        out, in_place, err_msg="server_update disagrees with server_apply"
    )
    if cls.declares_linear_update():
        np.testing.assert_array_equal(
            aliased, in_place, err_msg="a linear update must allow out to be the center"
        )
        bound = np.max(np.abs(center)) + sum(np.max(np.abs(u)) for u in updates)
        assert np.max(np.abs(in_place)) <= bound * (1 + 1e-6), (
            "the rule promises a bounded linear update but left the bound"
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
