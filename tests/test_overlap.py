"""Overlapped exchange: a real parameter server on 127.0.0.1, numpy models, real sockets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from distkeras_async import registry
from distkeras_async.errors import ServerError
from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.wire.auth import new_secret
from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.exchange import WorkerSession, run_session
from distkeras_async.worker.overlap import OverlappedClient
from distkeras_async.worker.reporter import attach_progress

SIZE = 8
SECRET = new_secret()


class Counter:
    """A model whose every local step adds 1 to every weight: the center's sum counts the
    steps that reached it."""

    def __init__(self) -> None:
        self.weights = np.zeros(SIZE, np.float32)

    def get_flat(self) -> np.ndarray:
        return self.weights.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        self.weights = np.array(flat, np.float32)

    def train_step(self, batch: Any) -> Mapping[str, float]:
        self.weights += 1.0
        return {"loss": 1.0}


@pytest.fixture
def server() -> Any:
    with ParameterServer(
        [np.zeros(SIZE, np.float32)], "downpour", num_workers=1, secret=SECRET
    ) as running:
        yield running


def connect(server: ParameterServer, worker: int = 0) -> ParameterServerClient:
    return ParameterServerClient("127.0.0.1", server.port or 0, SECRET, worker)


@pytest.mark.parametrize("name", ["downpour", "adag", "aeasgd", "eamsgd"])
def test_no_local_step_is_lost_or_committed_twice(name):
    # DOWNPOUR commits every step exactly once, overlapped or not: the center ends at the
    # number of steps. The other asynchronous rules run the same schedule to the end.
    algorithm = registry.resolve(name, communication_window=3)
    with ParameterServer(
        [np.zeros(SIZE, np.float32)], name, num_workers=1, secret=SECRET, communication_window=3
    ) as ps:
        with connect(ps) as client, OverlappedClient(client) as overlapped:
            history = run_session(WorkerSession(Counter(), algorithm, overlapped), range(20))
            assert overlapped.exchanges_overlapped == 7  # 6 windows + the final commit
        assert len(history) == 20
        if name == "downpour":
            np.testing.assert_array_equal(ps.center_flat, np.full(SIZE, 20.0))
            assert ps.version == 7


def test_commit_pull_returns_the_previous_exchanges_center(server):
    with connect(server) as client, OverlappedClient(client) as overlapped:
        start = overlapped.pull()
        ones = np.ones(SIZE, np.float32)
        # The first exchange answers with the center the worker started from ...
        np.testing.assert_array_equal(overlapped.commit_pull(ones), start)
        # ... and each later one with the center right after the previous commit: the
        # worker's own latest window is one exchange behind (bounded staleness).
        np.testing.assert_array_equal(overlapped.commit_pull(2 * ones), ones)
        out = np.empty(SIZE, np.float32)
        assert overlapped.commit_pull(ones, out=out) is out
        np.testing.assert_array_equal(out, 3 * ones)
        overlapped.wait()
        np.testing.assert_array_equal(server.center_flat, 4 * ones)


def test_the_rule_may_reuse_its_update_array_at_once(server):
    with connect(server) as client, OverlappedClient(client) as overlapped:
        overlapped.pull()
        update = np.ones(SIZE, np.float32)
        overlapped.commit(update)
        update[:] = 100.0  # the update in flight was copied
        overlapped.wait()
    np.testing.assert_array_equal(server.center_flat, np.ones(SIZE))


def test_a_failed_background_exchange_is_raised_by_the_next_call(server):
    with connect(server) as client:
        overlapped = OverlappedClient(client)
        overlapped.pull()
        bad = np.full(SIZE, np.nan, np.float32)
        overlapped.commit_pull(bad)  # returns at once: the refusal comes back later
        with pytest.raises(ServerError, match="NaN"):
            overlapped.commit_pull(np.ones(SIZE, np.float32))
    np.testing.assert_array_equal(server.center_flat, np.zeros(SIZE))


def test_leaving_waits_for_the_exchange_in_flight_and_raises_its_error(server):
    client = connect(server)
    with client, pytest.raises(ServerError, match="infinity"), OverlappedClient(client) as o:
        o.pull()
        o.commit(np.full(SIZE, np.inf, np.float32))


def test_progress_and_records_ride_on_the_next_commit_and_reports_keep_their_order(server):
    server.keep_epoch_centers()
    with connect(server) as client, OverlappedClient(client) as overlapped:
        overlapped.pull()
        from distkeras_async.worker.exchange import StepRecord

        attach_progress(overlapped, 2, [StepRecord(0, 0, 1.0, {"loss": 0.5})] * 2)
        overlapped.commit_pull(np.ones(SIZE, np.float32))
        # The epoch's report waits for its commit: the epoch's center holds that commit.
        overlapped.report({"loss": 0.5}, epoch=1)
        assert server.progress(0) == 2
    epoch = server.take_epoch_center(1)
    assert epoch is not None
    np.testing.assert_array_equal(epoch[0], np.ones(SIZE))
    assert server.unfinished_attempts() == {}  # the attempt said goodbye
    assert server.stats().workers[0].commits == 1


def test_staleness_counts_from_the_center_the_update_was_computed_from(server):
    # An overlapped worker's update comes from the center one exchange older than the last
    # one the server sent it: the commit says so, and the server counts staleness from it
    # (DynSGD divides by it), also on every shard of a sharded server.
    with connect(server) as client, OverlappedClient(client) as overlapped:
        overlapped.pull()
        for _ in range(5):
            overlapped.commit_pull(np.ones(SIZE, np.float32))
    stats = server.stats().workers[0]
    assert stats.commits == 5
    # The first commit came from version 0 with nothing applied since; each later one from
    # the center before the worker's own previous commit.
    assert (stats.staleness_total, stats.staleness_max) == (4, 1)


def test_a_commit_cannot_claim_a_newer_center_than_it_was_sent(server):
    with connect(server) as client:
        client.pull()
        client.commit(np.ones(SIZE, np.float32))
        client.base = 10**6  # from the future: the server keeps what it sent
        client.commit(np.ones(SIZE, np.float32))
    assert server.stats().workers[0].staleness_total == 1


def test_it_reads_only_what_the_worker_uses_through_to_the_connection(server):
    # Its members are declared (ExchangeClient), not forwarded wholesale: the connection's
    # identity, layout, progress and the driver's requests read through; nothing else does.
    server.request(learning_rate=0.5)
    with connect(server, worker=0) as client, OverlappedClient(client) as overlapped:
        overlapped.pull()
        assert (overlapped.worker_id, overlapped.attempt) == (0, 0)
        assert overlapped.layout == client.layout and overlapped.layout.size == SIZE
        assert overlapped.progress == client.progress == 0
        assert overlapped.control.learning_rate == 0.5
        assert not hasattr(overlapped, "num_workers")  # the connection's own, not forwarded
