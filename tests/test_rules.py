"""Every built-in rule checked against hand-computed numbers, through in-memory fake servers.

All numbers are small dyadic fractions, exactly representable in float32, so most checks are
exact equalities. The fakes follow the real server's bookkeeping (``server/core.py``): the version
grows by one per applied commit (asynchronous) or per round (synchronous), and a worker's
pulled version is recorded when it receives the center (``pull`` or ``commit_pull``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from distkeras_async.algorithm import Algorithm, UpdateMeta
from distkeras_async.algorithms.adag import ADAG
from distkeras_async.algorithms.aeasgd import AsynchronousEASGD
from distkeras_async.algorithms.averaging import ModelAveraging
from distkeras_async.algorithms.downpour import Downpour
from distkeras_async.algorithms.dynsgd import DynSGD
from distkeras_async.algorithms.eamsgd import AsynchronousEAMSGD
from distkeras_async.algorithms.easgd import EASGD
from distkeras_async.errors import HyperparameterError
from distkeras_async.layout import Layout
from distkeras_async.rules import add_scaled, mean_into, staleness_scale, sum_into
from distkeras_async.testing import next_center
from distkeras_async.worker.exchange import StepRecord, run_worker


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def served(
    rule: Algorithm, center: np.ndarray, updates: Sequence[np.ndarray], metas: Sequence[UpdateMeta]
) -> np.ndarray:
    """The center the server publishes after ``rule``'s one round (started afresh)."""
    rule.server_start(Layout.of([center]))
    return next_center(rule, center, updates, metas)


def assert_exact(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected)


# -- fake servers ------------------------------------------------------------------------


class FakeServer:
    """In-memory asynchronous parameter server applying ``algorithm.server_update``.

    The server object itself is worker 0's handle; :meth:`handle` gives other workers theirs.
    """

    def __init__(self, algorithm: Algorithm, center: Sequence[float]) -> None:
        self.algorithm = algorithm
        self.center = np.array(center, dtype=np.float32)
        self.layout = Layout.of([self.center])
        algorithm.server_start(self.layout)
        self.version = 0
        self.pulled: dict[int, int] = {}
        self.log: list[tuple[int, str]] = []
        self.commits: list[tuple[UpdateMeta, np.ndarray]] = []
        self._handles: dict[int, _Handle] = {}

    def handle(self, worker: int) -> _Handle:
        if worker not in self._handles:
            self._handles[worker] = _Handle(self, worker)
            self.pulled[worker] = self.version
        return self._handles[worker]

    # Worker 0's handle, so a FakeServer is a ServerHandle itself.
    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.handle(0).pull(out)

    def commit(self, update: np.ndarray) -> None:
        self.handle(0).commit(update)

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.handle(0).commit_pull(update, out)

    # What the server side does.
    def _send_center(self, worker: int, out: np.ndarray | None) -> np.ndarray:
        self.pulled[worker] = self.version
        if out is None:
            return self.center.copy()
        assert out.dtype == np.float32 and out.shape == self.center.shape
        np.copyto(out, self.center)
        return out

    def _apply(self, worker: int, update: np.ndarray) -> None:
        assert update.dtype == np.float32 and update.shape == self.center.shape
        received = update.copy()  # the server hands the rule its own receive buffer
        meta = UpdateMeta(worker, self.pulled[worker], self.version)
        self.commits.append((meta, received.copy()))
        self.center = next_center(self.algorithm, self.center, [received], [meta])
        self.version += 1


class _Handle:
    def __init__(self, server: FakeServer, worker: int) -> None:
        self.server, self.worker = server, worker
        self.layout = server.layout

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        self.server.log.append((self.worker, "pull"))
        return self.server._send_center(self.worker, out)

    def commit(self, update: np.ndarray) -> None:
        self.server.log.append((self.worker, "commit"))
        self.server._apply(self.worker, update)

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        self.server.log.append((self.worker, "commit_pull"))
        self.server._apply(self.worker, update)
        return self.server._send_center(self.worker, out)


class FakeSyncServer:
    """In-memory synchronous server: a round completes when every worker has committed.

    Workers run in threads; a barrier applies ``algorithm.server_update`` once all
    ``num_workers`` commits of a round are in, then releases them with the new center.
    """

    def __init__(self, algorithm: Algorithm, center: Sequence[float], num_workers: int) -> None:
        self.algorithm = algorithm
        self.center = np.array(center, dtype=np.float32)
        self.layout = Layout.of([self.center])
        algorithm.server_start(self.layout)
        self.version = 0
        self.rounds: list[dict[int, np.ndarray]] = []
        self._pending: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(num_workers, action=self._complete_round, timeout=10)

    def handle(self, worker: int) -> _SyncHandle:
        return _SyncHandle(self, worker)

    def _complete_round(self) -> None:
        workers = sorted(self._pending)
        self.rounds.append({w: self._pending[w].copy() for w in workers})
        updates = [self._pending[w] for w in workers]
        metas = [UpdateMeta(w, self.version, self.version) for w in workers]
        self.center = next_center(self.algorithm, self.center, updates, metas)
        self._pending = {}
        self.version += 1

    def _join(self, worker: int, update: np.ndarray) -> None:
        assert update.dtype == np.float32 and update.shape == self.center.shape
        with self._lock:
            assert worker not in self._pending, "committed twice in one round"
            self._pending[worker] = update.copy()
        self._barrier.wait()

    def _send_center(self, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return self.center.copy()
        np.copyto(out, self.center)
        return out


class _SyncHandle:
    def __init__(self, server: FakeSyncServer, worker: int) -> None:
        self.server, self.worker = server, worker
        self.layout = server.layout

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.server._send_center(out)

    def commit(self, update: np.ndarray) -> None:
        self.server._join(self.worker, update)

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        self.server._join(self.worker, update)
        return self.server._send_center(out)


def run_parallel(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run one job per worker thread (a synchronous round needs them all at once)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result(timeout=10) for future in futures]


# -- rules helpers -----------------------------------------------------------------------


def test_add_scaled_scales_update_in_place_and_adds() -> None:
    center, update = f32(1, 2, 3, 4), f32(2, 4, -6, 0)
    add_scaled(center, update, 0.5)
    assert_exact(center, f32(2, 4, 0, 4))
    assert_exact(update, f32(1, 2, -3, 0))  # scaled in place, no temporary


def test_add_scaled_with_unit_scale_leaves_update_untouched() -> None:
    center, update = f32(1, 2, 3), f32(0.5, -1, 2)
    add_scaled(center, update, 1.0)
    assert_exact(center, f32(1.5, 1, 5))
    assert_exact(update, f32(0.5, -1, 2))


def test_sum_into_adds_every_update() -> None:
    center = f32(1, 1, 1)
    sum_into(center, [f32(1, 2, 3), f32(4, 5, 6), f32(-1, 0, 0.5)])
    assert_exact(center, f32(5, 8, 10.5))


def test_sum_into_no_updates_is_identity() -> None:
    center = f32(1, 2, 3)
    sum_into(center, [])
    assert_exact(center, f32(1, 2, 3))


def test_mean_into_overwrites_center_with_the_mean() -> None:
    center = f32(100, -100, 7)  # the previous value must not leak into the mean
    mean_into(center, [f32(1, 2, 3), f32(3, 6, 9)])
    assert_exact(center, f32(2, 4, 6))
    center = f32(0, 0, 0)
    mean_into(center, [f32(1, 2, 3), f32(3, 6, 9), f32(2, 1, 0), f32(2, 3, 4)])
    assert_exact(center, f32(2, 3, 4))


def test_mean_into_three_updates() -> None:
    center = f32(9, 9, 9)
    mean_into(center, [f32(0, 3, 6), f32(3, 3, 0), f32(6, 3, 3)])
    np.testing.assert_allclose(center, f32(3, 3, 3), rtol=1e-6)


def test_mean_into_does_not_modify_updates() -> None:
    first, second = f32(1, 2), f32(3, 4)
    mean_into(f32(0, 0), [first, second])
    assert_exact(first, f32(1, 2))
    assert_exact(second, f32(3, 4))


@pytest.mark.parametrize(
    ("version", "pulled", "expected"),
    [(5, 5, 1.0), (6, 5, 0.5), (7, 4, 0.25), (14, 10, 0.2), (3, 5, 1.0)],
)
def test_staleness_scale(version: int, pulled: int, expected: float) -> None:
    meta = UpdateMeta(worker=0, pulled_version=pulled, version=version)
    assert staleness_scale(meta) == expected


def test_update_meta_staleness_is_clamped_at_zero() -> None:
    assert UpdateMeta(0, pulled_version=3, version=7).staleness == 4
    assert UpdateMeta(0, pulled_version=9, version=7).staleness == 0


# -- DOWNPOUR ----------------------------------------------------------------------------


def test_downpour_commits_delta_server_adds_worker_adopts_center() -> None:
    server = FakeServer(Downpour(), [1, 2, 3, 4])
    a_rule, b_rule = Downpour(), Downpour()
    a, b = server.handle(0), server.handle(1)

    x_a = a_rule.worker_start(f32(0, 0, 0, 0), a)
    x_b = b_rule.worker_start(f32(0, 0, 0, 0), b)
    assert_exact(x_a, f32(1, 2, 3, 4))
    assert_exact(x_b, f32(1, 2, 3, 4))

    # B trained to (2, 2, 2, 2): delta (1, 0, -1, -2); center (2, 2, 2, 2).
    x_b = b_rule.worker_exchange(f32(2, 2, 2, 2), b)
    assert_exact(server.commits[-1][1], f32(1, 0, -1, -2))
    assert_exact(server.center, f32(2, 2, 2, 2))
    assert_exact(x_b, f32(2, 2, 2, 2))

    # A trained to (1.5, 2, 2, 4.25): delta against ITS last pull (1, 2, 3, 4) is
    # (0.5, 0, -1, 0.25); center (2.5, 2, 1, 2.25), which A adopts.
    x_a = a_rule.worker_exchange(f32(1.5, 2, 2, 4.25), a)
    assert_exact(server.commits[-1][1], f32(0.5, 0, -1, 0.25))
    assert_exact(server.center, f32(2.5, 2, 1, 2.25))
    assert_exact(x_a, f32(2.5, 2, 1, 2.25))
    assert server.commits[-1][0].staleness == 1  # B's commit landed in between

    # A trains on to (3, 2, 1, 2) and finishes: delta (0.5, 0, 0, -0.25) is committed
    # (no pull) and A keeps its own final weights.
    final = f32(3, 2, 1, 2)
    kept = a_rule.worker_finish(final.copy(), a)
    assert_exact(server.commits[-1][1], f32(0.5, 0, 0, -0.25))
    assert_exact(server.center, f32(3, 2, 1, 2))
    assert_exact(kept, final)
    assert server.log[-1] == (0, "commit")
    assert [op for _, op in server.log] == ["pull", "pull", "commit_pull", "commit_pull", "commit"]


def test_downpour_returned_weights_are_not_the_reference() -> None:
    """The worker may train its returned weights in place without moving its reference."""
    server = FakeServer(Downpour(), [1, 1, 1])
    rule = Downpour()
    x = rule.worker_start(f32(0, 0, 0), server)
    x += f32(1, 2, 3)  # local training in place
    x = rule.worker_exchange(x, server)
    assert_exact(server.center, f32(2, 3, 4))
    x += f32(1, 1, 1)
    rule.worker_exchange(x, server)
    assert_exact(server.commits[-1][1], f32(1, 1, 1))
    assert_exact(server.center, f32(3, 4, 5))


def test_downpour_server_update_adds_update() -> None:
    center = served(Downpour(), f32(1, 2, 3, 4), [f32(0.5, -1, 0, 2)], [UpdateMeta(0, 0, 7)])
    assert_exact(center, f32(1.5, 1, 3, 6))  # staleness plays no role


# -- ADAG --------------------------------------------------------------------------------


def test_adag_divides_delta_by_window() -> None:
    rule = ADAG(communication_window=4)
    server = FakeServer(ADAG(communication_window=4), [1, 2, 3, 4])
    x = rule.worker_start(f32(0, 0, 0, 0), server)
    # Trained to (3, 2, 1, 4): change (2, 0, -2, 0) / 4 = (0.5, 0, -0.5, 0).
    x = rule.worker_exchange(f32(3, 2, 1, 4), server)
    assert_exact(server.commits[-1][1], f32(0.5, 0, -0.5, 0))
    assert_exact(server.center, f32(1.5, 2, 2.5, 4))
    assert_exact(x, f32(1.5, 2, 2.5, 4))
    # Trained to (2.5, 2, 2.5, 6): change (1, 0, 0, 2) / 4, committed at the finish too.
    rule.worker_finish(f32(2.5, 2, 2.5, 6), server)
    assert_exact(server.commits[-1][1], f32(0.25, 0, 0, 0.5))
    assert_exact(server.center, f32(1.75, 2, 2.5, 4.5))


def test_adag_window_one_is_downpour() -> None:
    rule = ADAG(communication_window=1)
    server = FakeServer(rule, [0, 0, 0])
    rule.worker_start(f32(0, 0, 0), server)
    rule.worker_exchange(f32(1, -2, 3), server)
    assert_exact(server.center, f32(1, -2, 3))


# -- DynSGD ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pulled", "version", "expected"),
    [
        (5, 5, (5, -7, 3, 1)),  # staleness 0: the whole update (4, -8, 2, 0)
        (5, 6, (3, -3, 2, 1)),  # staleness 1: half, (2, -4, 1, 0)
        (4, 7, (2, -1, 1.5, 1)),  # staleness 3: a quarter, (1, -2, 0.5, 0)
    ],
)
def test_dynsgd_scales_by_staleness(pulled: int, version: int, expected: tuple[float, ...]) -> None:
    meta = UpdateMeta(worker=2, pulled_version=pulled, version=version)
    center = served(DynSGD(), f32(1, 1, 1, 1), [f32(4, -8, 2, 0)], [meta])
    assert_exact(center, f32(*expected))


def test_dynsgd_through_server_versions() -> None:
    server = FakeServer(DynSGD(), [0, 0, 0])
    rules = [DynSGD() for _ in range(3)]
    handles = [server.handle(w) for w in range(3)]
    for rule, handle in zip(rules, handles, strict=True):
        rule.worker_start(f32(0, 0, 0), handle)  # all pulled version 0
    rules[0].worker_exchange(f32(4, 4, 4), handles[0])  # staleness 0: +4
    assert_exact(server.center, f32(4, 4, 4))
    rules[1].worker_exchange(f32(2, 0, -2), handles[1])  # staleness 1: +(1, 0, -1)
    assert_exact(server.center, f32(5, 4, 3))
    rules[2].worker_exchange(f32(3, 6, 9), handles[2])  # staleness 2: +(1, 2, 3)
    assert_exact(server.center, f32(6, 6, 6))
    assert [meta.staleness for meta, _ in server.commits] == [0, 1, 2]
    # Worker 0 received version 1 (center (4, 4, 4)) with its commit_pull; two commits
    # landed since, so staleness 2: its change (7, 4, 1) - (4, 4, 4) = (3, 0, -3) is divided
    # by 3.
    rules[0].worker_exchange(f32(7, 4, 1), handles[0])
    assert server.commits[-1][0].staleness == 2
    assert_exact(server.center, f32(7, 6, 5))


# -- EASGD (synchronous) ---------------------------------------------------------------


def test_easgd_alpha_is_learning_rate_times_rho() -> None:
    assert EASGD(learning_rate=0.125, rho=2.0).alpha == 0.25
    assert EASGD().alpha == pytest.approx(0.05)


def test_easgd_server_update_sums_elastic_differences() -> None:
    metas = [UpdateMeta(w, 0, 0) for w in range(3)]
    updates = [f32(1, 0, 0), f32(0, 1, -1), f32(-1, 0, 1)]
    assert_exact(served(EASGD(), f32(1, 2, 3), updates, metas), f32(1, 3, 3))


def test_easgd_round_of_three_workers() -> None:
    # alpha = 0.125 * 2 = 0.25
    hyper = {"learning_rate": 0.125, "rho": 2.0, "communication_window": 1}
    server = FakeSyncServer(EASGD(**hyper), [1, 2, 3], num_workers=3)
    rules = [EASGD(**hyper) for _ in range(3)]
    handles = [server.handle(w) for w in range(3)]
    for rule, handle in zip(rules, handles, strict=True):
        assert_exact(rule.worker_start(f32(0, 0, 0), handle), f32(1, 2, 3))

    # Round 1 against center c = (1, 2, 3):
    #   x0 = (5, 2, 3):   e0 = 0.25 * (4, 0, 0)  = (1, 0, 0);  x0 -> (4, 2, 3)
    #   x1 = (1, 6, -1):  e1 = 0.25 * (0, 4, -4) = (0, 1, -1); x1 -> (1, 5, 0)
    #   x2 = (-3, 2, 7):  e2 = 0.25 * (-4, 0, 4) = (-1, 0, 1); x2 -> (-2, 2, 6)
    #   center -> c + e0 + e1 + e2 = (1, 3, 3)
    trained = [f32(5, 2, 3), f32(1, 6, -1), f32(-3, 2, 7)]
    results = run_parallel(
        [lambda w=w: rules[w].worker_exchange(trained[w].copy(), handles[w]) for w in range(3)]
    )
    assert_exact(results[0], f32(4, 2, 3))
    assert_exact(results[1], f32(1, 5, 0))
    assert_exact(results[2], f32(-2, 2, 6))
    assert_exact(server.rounds[0][0], f32(1, 0, 0))
    assert_exact(server.rounds[0][1], f32(0, 1, -1))
    assert_exact(server.rounds[0][2], f32(-1, 0, 1))
    assert_exact(server.center, f32(1, 3, 3))

    # Round 2 is against the NEW center (1, 3, 3), received in round 1's commit_pull:
    #   x0 = (5, 7, 3): e0 = (1, 1, 0); x0 -> (4, 6, 3)
    #   x1 = (1, 3, 7): e1 = (0, 0, 1); x1 -> (1, 3, 6)
    #   x2 = (1, 3, 3): e2 = 0;          x2 unchanged
    #   center -> (2, 4, 4)
    trained = [f32(5, 7, 3), f32(1, 3, 7), f32(1, 3, 3)]
    results = run_parallel(
        [lambda w=w: rules[w].worker_finish(trained[w].copy(), handles[w]) for w in range(3)]
    )
    assert_exact(results[0], f32(4, 6, 3))
    assert_exact(results[1], f32(1, 3, 6))
    assert_exact(results[2], f32(1, 3, 3))
    assert_exact(server.center, f32(2, 4, 4))
    assert server.version == 2


def test_easgd_worker_moves_in_place_and_commits_elastic_difference() -> None:
    # alpha = 0.5 * 1 = 0.5, one worker
    rule = EASGD(learning_rate=0.5, rho=1.0)
    server = FakeSyncServer(EASGD(learning_rate=0.5, rho=1.0), [0, 0, 0, 0], num_workers=1)
    handle = server.handle(0)
    rule.worker_start(f32(9, 9, 9, 9), handle)
    x = rule.worker_exchange(f32(2, -4, 6, 0), handle)
    assert_exact(server.rounds[0][0], f32(1, -2, 3, 0))
    assert_exact(x, f32(1, -2, 3, 0))
    assert_exact(server.center, f32(1, -2, 3, 0))


# -- asynchronous EASGD ----------------------------------------------------------------


def test_aeasgd_pulls_then_moves_elastically_both_ways() -> None:
    # alpha = 0.25 * 2 = 0.5
    hyper = {"learning_rate": 0.25, "rho": 2.0}
    server = FakeServer(AsynchronousEASGD(**hyper), [2, 4, 6, 8])
    a_rule, b_rule = AsynchronousEASGD(**hyper), AsynchronousEASGD(**hyper)
    a, b = server.handle(0), server.handle(1)
    a_rule.worker_start(f32(0, 0, 0, 0), a)
    b_rule.worker_start(f32(0, 0, 0, 0), b)

    # B: pulls (2, 4, 6, 8); x_b = (2, 4, 6, -8): e = 0.5 * (0, 0, 0, -16) = (0, 0, 0, -8);
    # x_b -> (2, 4, 6, 0); center -> (2, 4, 6, 0).
    x_b = b_rule.worker_exchange(f32(2, 4, 6, -8), b)
    assert_exact(x_b, f32(2, 4, 6, 0))
    assert_exact(server.center, f32(2, 4, 6, 0))

    # A must pull the CURRENT center (2, 4, 6, 0), not the one it started from:
    # x_a = (4, 4, 2, 8): e = 0.5 * (2, 0, -4, 8) = (1, 0, -2, 4);
    # x_a -> (3, 4, 4, 4); center -> (3, 4, 4, 4).
    x_a = a_rule.worker_exchange(f32(4, 4, 2, 8), a)
    assert_exact(server.commits[-1][1], f32(1, 0, -2, 4))
    assert_exact(x_a, f32(3, 4, 4, 4))
    assert_exact(server.center, f32(3, 4, 4, 4))
    assert server.commits[-1][0].staleness == 0  # A pulled just before committing
    assert [op for w, op in server.log if w == 0] == ["pull", "pull", "commit"]

    # The finish is one more elastic exchange: x_a = (5, 4, 4, 2) against (3, 4, 4, 4):
    # e = (1, 0, 0, -1); x_a -> (4, 4, 4, 3); center -> (4, 4, 4, 3).
    x_a = a_rule.worker_finish(f32(5, 4, 4, 2), a)
    assert_exact(x_a, f32(4, 4, 4, 3))
    assert_exact(server.center, f32(4, 4, 4, 3))


# -- asynchronous EAMSGD ----------------------------------------------------------------

ETA = 0.5  # local SGD learning rate
DELTA = 0.5  # momentum


def sgd_on_half_squared_norm(w: np.ndarray) -> np.ndarray:
    """One SGD step on f(w) = 0.5 * ||w||^2, whose gradient is w; leaves w unchanged."""
    return w - np.float32(ETA) * w


def started_eamsgd(x0: np.ndarray) -> tuple[AsynchronousEAMSGD, FakeServer]:
    rule = AsynchronousEAMSGD(momentum=DELTA, learning_rate=0.25, rho=2.0)
    server = FakeServer(AsynchronousEAMSGD(momentum=DELTA), x0)
    start = rule.worker_start(f32(0, 0, 0), server)
    assert_exact(start, x0)
    return rule, server


def test_eamsgd_reproduces_algorithm_2_for_three_steps() -> None:
    """v <- delta*v - eta*grad(x + delta*v); x <- x + v, with eta = delta = 0.5, grad(w) = w.

    x0 = (4, -2, 8), v0 = 0
    step 1: y = (4, -2, 8);           v1 = -0.5*y        = (-2, 1, -4);           x1 = (2, -1, 4)
    step 2: y = x1 + 0.5*v1 = (1, -0.5, 2);
            v2 = 0.5*v1 - 0.5*y = (-1, 0.5, -2) - (0.5, -0.25, 1) = (-1.5, 0.75, -3);
            x2 = (0.5, -0.25, 1)
    step 3: y = x2 + 0.5*v2 = (-0.25, 0.125, -0.5);
            v3 = (-0.75, 0.375, -1.5) - (-0.125, 0.0625, -0.25) = (-0.625, 0.3125, -1.25);
            x3 = (-0.125, 0.0625, -0.25)
    """
    rule, _ = started_eamsgd(f32(4, -2, 8))
    seen: list[np.ndarray] = []

    def local_step(w: np.ndarray) -> np.ndarray:
        seen.append(w.copy())
        return sgd_on_half_squared_norm(w)

    x = f32(4, -2, 8)
    x = rule.worker_step(x, local_step)
    assert_exact(x, f32(2, -1, 4))
    x = rule.worker_step(x, local_step)
    assert_exact(x, f32(0.5, -0.25, 1))
    x = rule.worker_step(x, local_step)
    assert_exact(x, f32(-0.125, 0.0625, -0.25))
    # The gradient was evaluated at the look-ahead points y.
    assert_exact(seen[0], f32(4, -2, 8))
    assert_exact(seen[1], f32(1, -0.5, 2))
    assert_exact(seen[2], f32(-0.25, 0.125, -0.5))


def test_eamsgd_lookahead_sign_is_plus() -> None:
    """With velocity v1 = (-2, 1, -4) at x1 = (2, -1, 4), the look-ahead is x1 + 0.5*v1.

    The 2017 bug (x - delta*v) would evaluate the gradient at (3, -1.5, 6) and land on
    x2 = (-0.5, 0.25, -1) instead of (0.5, -0.25, 1).
    """
    rule, _ = started_eamsgd(f32(4, -2, 8))
    seen: list[np.ndarray] = []

    def local_step(w: np.ndarray) -> np.ndarray:
        seen.append(w.copy())
        return sgd_on_half_squared_norm(w)

    x1 = rule.worker_step(f32(4, -2, 8), local_step)
    x2 = rule.worker_step(x1.copy(), local_step)
    assert_exact(seen[1], f32(1, -0.5, 2))
    assert not np.array_equal(seen[1], f32(3, -1.5, 6))
    assert not np.array_equal(x2, f32(-0.5, 0.25, -1))
    assert_exact(x2, f32(0.5, -0.25, 1))


def test_eamsgd_learning_rate_applied_once() -> None:
    """From rest the first step is plain SGD: x1 = x0 - eta*grad = (2, -1, 4).

    The 2017 bug (v = delta*v - eta*(eta*grad)) would give x1 = x0 - 0.25*x0 = (3, -1.5, 6).
    """
    rule, _ = started_eamsgd(f32(4, -2, 8))
    x1 = rule.worker_step(f32(4, -2, 8), sgd_on_half_squared_norm)
    assert not np.array_equal(x1, f32(3, -1.5, 6))
    assert_exact(x1, f32(2, -1, 4))
    # And the velocity it carries is -eta*grad, not -eta^2*grad: with a zero gradient
    # the next step moves by exactly delta * v1 = (-1, 0.5, -2).
    x2 = rule.worker_step(x1.copy(), lambda w: w.copy())
    assert_exact(x2, f32(1, -0.5, 2))


def test_eamsgd_zero_momentum_is_plain_local_step() -> None:
    rule = AsynchronousEAMSGD(momentum=0.0)
    rule.worker_start(f32(0, 0), FakeServer(rule, [4, -8]))
    x = rule.worker_step(f32(4, -8), sgd_on_half_squared_norm)
    assert_exact(x, f32(2, -4))
    x = rule.worker_step(x, sgd_on_half_squared_norm)
    assert_exact(x, f32(1, -2))


def test_eamsgd_exchange_is_elastic_and_keeps_velocity() -> None:
    # alpha = 0.25 * 2 = 0.5; x = (6, -2, 8) against center (4, -2, 8):
    # e = (1, 0, 0); x -> (5, -2, 8); center -> (5, -2, 8).
    rule, server = started_eamsgd(f32(4, -2, 8))
    rule.worker_step(f32(4, -2, 8), sgd_on_half_squared_norm)  # v1 = (-2, 1, -4)
    x = rule.worker_exchange(f32(6, -2, 8), server)
    assert_exact(x, f32(5, -2, 8))
    assert_exact(server.center, f32(5, -2, 8))
    # Velocity survives the exchange: a zero-gradient step moves by 0.5 * v1.
    x = rule.worker_step(x, lambda w: w.copy())
    assert_exact(x, f32(4, -1.5, 6))


# -- model averaging -------------------------------------------------------------------


def test_averaging_server_round_is_the_mean() -> None:
    metas = [UpdateMeta(w, 0, 0) for w in range(2)]
    center = served(ModelAveraging(), f32(7, 7, 7), [f32(1, 2, 3), f32(3, 6, -1)], metas)
    assert_exact(center, f32(2, 4, 1))


def test_averaging_rounds_do_not_carry_over() -> None:
    server = FakeSyncServer(ModelAveraging(), [0, 0, 0], num_workers=2)
    rules = [ModelAveraging(), ModelAveraging()]
    handles = [server.handle(0), server.handle(1)]
    for rule, handle in zip(rules, handles, strict=True):
        rule.worker_start(f32(5, 5, 5), handle)

    # Round 1: mean of (1, 2, 3) and (3, 4, 5) is (2, 3, 4).
    weights = [f32(1, 2, 3), f32(3, 4, 5)]
    results = run_parallel(
        [lambda w=w: rules[w].worker_exchange(weights[w].copy(), handles[w]) for w in range(2)]
    )
    assert_exact(server.center, f32(2, 3, 4))
    assert_exact(results[0], f32(2, 3, 4))
    assert_exact(results[1], f32(2, 3, 4))

    # Round 2: mean of (10, 0, 0) and (0, 0, 10) is (5, 0, 5); nothing of round 1 remains
    # (a buffer kept across rounds would give (3.5, 1.5, 4.5) or worse).
    weights = [f32(10, 0, 0), f32(0, 0, 10)]
    results = run_parallel(
        [lambda w=w: rules[w].worker_finish(weights[w].copy(), handles[w]) for w in range(2)]
    )
    assert_exact(server.center, f32(5, 0, 5))
    assert_exact(results[0], f32(5, 0, 5))
    assert_exact(results[1], f32(5, 0, 5))
    # The workers commit their weights, not deltas.
    assert_exact(server.rounds[1][0], f32(10, 0, 0))
    assert_exact(server.rounds[1][1], f32(0, 0, 10))


def test_averaging_returned_weights_are_private_copies() -> None:
    server = FakeSyncServer(ModelAveraging(), [1, 1], num_workers=1)
    rule = ModelAveraging()
    handle = server.handle(0)
    x = rule.worker_start(f32(0, 0), handle)
    x += f32(1, 1)  # training in place must not touch the rule's copy of the center
    x = rule.worker_exchange(x, handle)
    assert_exact(x, f32(2, 2))
    x += f32(2, 0)
    x = rule.worker_exchange(x, handle)
    assert_exact(x, f32(4, 2))


# -- hyperparameter validation ---------------------------------------------------------


def test_unknown_hyperparameter_is_named_and_valid_ones_listed() -> None:
    with pytest.raises(HyperparameterError) as info:
        EASGD(learning_rat=0.1)
    message = str(info.value)
    assert "learning_rat" in message
    for valid in ("communication_window", "learning_rate", "rho"):
        assert valid in message
    assert isinstance(info.value, ValueError)


def test_unknown_hyperparameter_for_downpour() -> None:
    with pytest.raises(HyperparameterError, match="'momentum'") as info:
        Downpour(momentum=0.9)
    assert "communication_window" in str(info.value)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (EASGD, "learning_rate", "0.1"),  # str for a float
        (EASGD, "rho", None),
        (AsynchronousEAMSGD, "momentum", "0.5"),
        (Downpour, "communication_window", True),  # bool for an int
        (Downpour, "communication_window", np.bool_(True)),
        (Downpour, "communication_window", 2.0),  # float for an int
        (Downpour, "communication_window", "3"),
        (AsynchronousEASGD, "learning_rate", True),  # bool for a float
    ],
)
def test_wrong_type_rejected(cls: type[Algorithm], name: str, value: object) -> None:
    with pytest.raises(HyperparameterError, match=name):
        cls(**{name: value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), np.float32("nan")])
def test_non_finite_rejected(value: float) -> None:
    with pytest.raises(HyperparameterError, match="learning_rate") as info:
        AsynchronousEASGD(learning_rate=value)
    assert "finite" in str(info.value)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (Downpour, "communication_window", 0),
        (ADAG, "communication_window", -3),
        (AsynchronousEAMSGD, "momentum", 1.5),
        (AsynchronousEAMSGD, "momentum", -0.1),
        (EASGD, "rho", 0.0),
        (EASGD, "learning_rate", -0.01),
    ],
)
def test_out_of_range_rejected(cls: type[Algorithm], name: str, value: object) -> None:
    with pytest.raises(HyperparameterError, match=name):
        cls(**{name: value})


@pytest.mark.parametrize("cls", [EASGD, AsynchronousEASGD, AsynchronousEAMSGD])
def test_elastic_alpha_above_one_rejected(cls: type[Algorithm]) -> None:
    with pytest.raises(HyperparameterError) as info:
        cls(learning_rate=0.5, rho=5.0)  # alpha = 2.5
    message = str(info.value)
    assert "learning_rate" in message
    assert "rho" in message
    # alpha exactly 1 is allowed
    assert cls(learning_rate=0.5, rho=2.0).alpha == 1.0


def test_valid_values_are_converted() -> None:
    algorithm = AsynchronousEAMSGD(communication_window=np.int64(3), learning_rate=1, rho=0.5)
    assert algorithm.communication_window == 3
    assert type(algorithm.communication_window) is int
    assert algorithm.learning_rate == 1.0
    assert type(algorithm.learning_rate) is float
    assert algorithm.settings == {
        "communication_window": 3,
        "commit_dtype": "float32",
        "pull_dtype": "float32",
        "rho": 0.5,
        "learning_rate": 1.0,
        "momentum": 0.7,
    }


# -- the worker loop -------------------------------------------------------------------


class LinearRegression:
    """A numpy LocalModel: y = X w, squared loss, one SGD step per batch."""

    def __init__(self, size: int, lr: float = 0.1) -> None:
        self.w = np.zeros(size, dtype=np.float32)
        self.lr = np.float32(lr)
        self.get_flat_calls = 0
        self.trained_at: list[np.ndarray] = []

    def get_flat(self) -> np.ndarray:
        self.get_flat_calls += 1
        return self.w.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        self.w = np.array(flat, dtype=np.float32, copy=True)

    def train_step(self, batch: tuple[np.ndarray, np.ndarray]) -> Mapping[str, float]:
        x, y = batch
        self.trained_at.append(self.w.copy())
        residual = x @ self.w - y
        grad = (x.T @ residual / len(y)).astype(np.float32)
        self.w = self.w - self.lr * grad
        return {"loss": float(0.5 * np.mean(residual**2))}


def regression_batches(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    true_w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    batches = []
    for _ in range(n):
        x = rng.normal(size=(8, 3)).astype(np.float32)
        batches.append((x, x @ true_w))
    return batches


class SpyDownpour(Downpour):
    """DOWNPOUR that counts the calls the loop makes."""

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.calls: list[str] = []

    def worker_start(self, weights: np.ndarray, server: Any) -> np.ndarray:
        self.calls.append("start")
        return super().worker_start(weights, server)

    def worker_exchange(self, weights: np.ndarray, server: Any) -> np.ndarray:
        self.calls.append("exchange")
        return super().worker_exchange(weights, server)

    def worker_finish(self, weights: np.ndarray, server: Any) -> np.ndarray:
        self.calls.append("finish")
        return super().worker_finish(weights, server)


def test_run_worker_exchanges_every_window_and_finishes_remaining_steps() -> None:
    algorithm = SpyDownpour(communication_window=3)
    server = FakeServer(Downpour(), [0.5, 0.5, 0.5])
    model = LinearRegression(3)
    reported: list[Mapping[str, float]] = []
    history = run_worker(
        model,
        algorithm,
        server,
        regression_batches(7),
        worker_id=4,
        on_exchange=reported.append,
    )
    assert algorithm.calls == ["start", "exchange", "exchange", "finish"]
    assert [op for _, op in server.log] == ["pull", "commit_pull", "commit_pull", "commit"]
    assert len(reported) == 3
    assert all("loss" in metrics for metrics in reported)
    assert len(history) == 7
    assert all(isinstance(record, StepRecord) for record in history)
    assert [record.worker for record in history] == [4] * 7
    assert [record.iteration for record in history] == list(range(7))
    assert all("loss" in record.metrics for record in history)
    timestamps = [record.timestamp for record in history]
    assert timestamps == sorted(timestamps)
    # The first step trained from the pulled center, not from the model's own zeros.
    assert_exact(model.trained_at[0], f32(0.5, 0.5, 0.5))
    # A single DOWNPOUR worker: every local change reached the center, nothing was lost.
    np.testing.assert_allclose(server.center, model.w, rtol=0, atol=1e-6)
    assert history[-1].metrics["loss"] < history[0].metrics["loss"]
    # Steps without an exchange are not flattened: start, two exchanges, the finish.
    assert model.get_flat_calls == 4


def test_run_worker_no_finish_when_last_step_exchanged() -> None:
    algorithm = SpyDownpour(communication_window=3)
    server = FakeServer(Downpour(), [0, 0, 0])
    history = run_worker(LinearRegression(3), algorithm, server, regression_batches(6))
    assert algorithm.calls == ["start", "exchange", "exchange"]
    assert [op for _, op in server.log] == ["pull", "commit_pull", "commit_pull"]
    assert [record.iteration for record in history] == list(range(6))
    assert [record.worker for record in history] == [0] * 6


def test_run_worker_fewer_steps_than_window_finishes_once() -> None:
    algorithm = SpyDownpour(communication_window=5)
    server = FakeServer(Downpour(), [0, 0, 0])
    history = run_worker(LinearRegression(3), algorithm, server, regression_batches(2))
    assert algorithm.calls == ["start", "finish"]
    assert len(history) == 2


def test_run_worker_without_batches_still_finishes() -> None:
    algorithm = SpyDownpour(communication_window=3)
    server = FakeServer(Downpour(), [1, 2, 3])
    model = LinearRegression(3)
    history = run_worker(model, algorithm, server, [])
    assert history == []
    assert algorithm.calls == ["start", "finish"]
    assert_exact(server.center, f32(1, 2, 3))  # a zero delta leaves the center alone


class HalfSquaredNorm:
    """A numpy LocalModel for f(w) = 0.5 * ||w||^2 with plain SGD (gradient w)."""

    def __init__(self, size: int, lr: float) -> None:
        self.w = np.zeros(size, dtype=np.float32)
        self.lr = np.float32(lr)
        self.trained_at: list[np.ndarray] = []

    def get_flat(self) -> np.ndarray:
        return self.w.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        self.w = np.array(flat, dtype=np.float32, copy=True)

    def train_step(self, batch: object) -> Mapping[str, float]:
        self.trained_at.append(self.w.copy())
        loss = float(0.5 * self.w @ self.w)
        self.w = self.w - self.lr * self.w
        return {"loss": loss}


def test_run_worker_eamsgd_uses_worker_step_every_step() -> None:
    assert AsynchronousEAMSGD.acts_every_step()
    assert not Downpour.acts_every_step()

    class SpyEAMSGD(AsynchronousEAMSGD):
        def __init__(self, **hyperparameters: Any) -> None:
            super().__init__(**hyperparameters)
            self.steps = 0
            self.exchanges = 0

        def worker_step(self, weights: np.ndarray, local_step: Any) -> np.ndarray:
            self.steps += 1
            return super().worker_step(weights, local_step)

        def worker_exchange(self, weights: np.ndarray, server: Any) -> np.ndarray:
            self.exchanges += 1
            return super().worker_exchange(weights, server)

    # eta = delta = 0.5 locally; alpha = 0.25 * 2 = 0.5; window 3.
    algorithm = SpyEAMSGD(momentum=DELTA, learning_rate=0.25, rho=2.0, communication_window=3)
    server = FakeServer(AsynchronousEAMSGD(learning_rate=0.25, rho=2.0), [4, -2, 8])
    model = HalfSquaredNorm(3, lr=ETA)
    history = run_worker(model, algorithm, server, [None] * 3, worker_id=1)
    assert algorithm.steps == 3
    assert algorithm.exchanges == 1
    assert [record.iteration for record in history] == [0, 1, 2]
    assert [record.worker for record in history] == [1, 1, 1]
    # The model trained at the look-ahead points of Algorithm 2 (see the 3-step test).
    assert_exact(model.trained_at[0], f32(4, -2, 8))
    assert_exact(model.trained_at[1], f32(1, -0.5, 2))
    assert_exact(model.trained_at[2], f32(-0.25, 0.125, -0.5))
    assert history[0].metrics["loss"] == 42.0  # 0.5 * (16 + 4 + 64)
    # After step 3, x3 = (-0.125, 0.0625, -0.25); the exchange pulls (4, -2, 8):
    # e = 0.5 * (-4.125, 2.0625, -8.25) = (-2.0625, 1.03125, -4.125)
    # x -> x3 - e = (1.9375, -0.96875, 3.875); center -> (4, -2, 8) + e, the same point.
    assert_exact(model.w, f32(1.9375, -0.96875, 3.875))
    assert_exact(server.center, f32(1.9375, -0.96875, 3.875))
    assert [op for _, op in server.log] == ["pull", "pull", "commit"]


def test_run_worker_synchronous_averaging_two_workers() -> None:
    server = FakeSyncServer(ModelAveraging(), [0, 0, 0], num_workers=2)
    models = [LinearRegression(3), LinearRegression(3)]
    algorithms = [
        ModelAveraging(communication_window=2),
        ModelAveraging(communication_window=2),
    ]
    data = [regression_batches(4, seed=1), regression_batches(4, seed=2)]
    histories = run_parallel(
        [
            lambda w=w: run_worker(models[w], algorithms[w], server.handle(w), data[w], worker_id=w)
            for w in range(2)
        ]
    )
    assert server.version == 2  # two rounds, no finish round (4 steps, window 2)
    assert [len(h) for h in histories] == [4, 4]
    assert [r.worker for r in histories[1]] == [1, 1, 1, 1]
    # Both workers end on the last round's average.
    assert_exact(models[0].w, server.center)
    assert_exact(models[1].w, server.center)
    np.testing.assert_allclose(
        server.center, (server.rounds[1][0] + server.rounds[1][1]) / 2, rtol=1e-6
    )
