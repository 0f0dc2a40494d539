"""The sharded parameter server: K shard processes on 127.0.0.1, real sockets, numpy models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wait_until

from distkeras_async.errors import (
    AuthenticationError,
    LayoutMismatchError,
    RemoteProtocolError,
    RuleFailedError,
    RunFailedError,
    ServerError,
)
from distkeras_async.layout import Layout
from distkeras_async.server.checkpoint import load_checkpoint
from distkeras_async.server.factory import make_server
from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.server.shard_handle import ShardError, algorithm_spec
from distkeras_async.server.sharded import ShardedParameterServer
from distkeras_async.shards import default_shards, split
from distkeras_async.wire.auth import new_secret
from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.sharded_client import ShardedClient

TESTS = str(Path(__file__).parent)
WEIGHTS = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros(5, np.float32)]
LAYOUT = Layout.of(WEIGHTS)


@pytest.fixture
def rules_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard processes can import tests/shard_rules.py."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", TESTS if not path else f"{TESTS}{os.pathsep}{path}")


@pytest.fixture
def sharded() -> Iterator[Any]:
    """Start a sharded server with the given arguments; every one is stopped at the end."""
    servers: list[ShardedParameterServer] = []

    def start(algorithm: Any = "downpour", shards: int = 2, **kwargs: Any) -> Any:
        kwargs.setdefault("num_workers", 1)
        kwargs.setdefault("secret", SECRET)
        server = ShardedParameterServer(WEIGHTS, algorithm, shards=shards, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


SECRET = new_secret()


def client(server: Any, worker: int = 0, **kwargs: Any) -> ShardedClient:
    return ShardedClient(
        "127.0.0.1", server.ports, kwargs.pop("secret", SECRET), worker, layout=LAYOUT, **kwargs
    )


# --------------------------------------------------------------------------- the cut


def test_split_is_contiguous_balanced_and_cuts_tensors_into_pieces():
    layout = Layout.of([np.zeros((10, 3), np.float32), np.zeros(7, np.float32)])
    shards = split(layout, 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 12), (12, 24), (24, 37)]
    # The first tensor (30 values) is cut between all three shards; each shard sees 1-D
    # float32 pieces, one per tensor it overlaps.
    assert [[p.shape for p in s.layout.specs] for s in shards] == [
        [(12,)],
        [(12,)],
        [(6,), (7,)],
    ]
    assert sum(s.size for s in shards) == layout.size
    assert split(layout, 1)[0].layout.size == layout.size
    with pytest.raises(ValueError, match="at most one per parameter"):
        split(layout, 38)
    with pytest.raises(ValueError, match="at least 1"):
        split(layout, 0)


def test_default_shard_count_follows_model_size_and_cores():
    assert default_shards(100_000_000, 2) == 1  # this 2-core machine: the simple server
    assert default_shards(1_000_000, 16) == 1  # small models: one shard
    assert default_shards(10_000_000, 16) == 5
    assert default_shards(100_000_000, 16) == 8
    assert default_shards(100_000_000, 8) == 4  # at most one shard per 2 cores


def test_make_server_keeps_one_shard_in_process_and_refuses_a_shared_tls_context(tmp_path):
    server = make_server(WEIGHTS, "downpour", shards=1, num_workers=1, secret=SECRET)
    assert isinstance(server, ParameterServer)
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ValueError, match="certificate_file, key_file"):
        make_server(
            WEIGHTS, "downpour", shards=2, ssl_context=context, num_workers=1, secret=SECRET
        )
    with pytest.raises(TypeError, match="ssl_context must be"):
        bad: Any = ("only-one",)
        make_server(WEIGHTS, "downpour", shards=2, ssl_context=bad, num_workers=1)
    # The default count never turns a working context into an error: one shard.
    server = make_server(
        WEIGHTS, "downpour", shards=None, ssl_context=context, num_workers=1, secret=SECRET
    )
    assert isinstance(server, ParameterServer)


def test_a_class_in_main_cannot_be_sent_to_a_shard_process():
    from distkeras_async.algorithms.downpour import Downpour

    class Local(Downpour):
        name = "test-local-downpour"

    with pytest.raises(ValueError, match="cannot import a class defined in __main__"):
        algorithm_spec(Local())
    assert algorithm_spec(Downpour())["name"] == "downpour"


# --------------------------------------------------------------------------- exchanges


@pytest.mark.slow  # shard processes: fresh interpreters
def test_commits_reach_every_shard_and_the_reply_is_reassembled(sharded):
    server = sharded(shards=3, num_workers=2)
    assert len(set(server.ports)) == 3
    initial = LAYOUT.flatten(WEIGHTS)
    with client(server, 0) as a, client(server, 1) as b:
        np.testing.assert_array_equal(a.pull(), initial)
        update = np.linspace(-1, 1, LAYOUT.size).astype(np.float32)
        center = a.commit_pull(update)
        np.testing.assert_allclose(center, initial + update)
        b.commit(update)
        out = np.empty(LAYOUT.size, np.float32)
        assert b.pull(out=out) is out
        np.testing.assert_allclose(out, initial + 2 * update)
        assert a.version == 1 and b.version == 2
    np.testing.assert_allclose(server.center_flat, initial + 2 * update)
    assert server.version == 2
    stats = server.stats()
    assert stats.commits == 2 and stats.version == 2
    assert stats.workers[0].finished and stats.workers[1].finished
    assert [s.commits for s in server.shard_stats()] == [2, 2, 2]
    server.stop()
    # After stop the final center stays readable, as with one server.
    np.testing.assert_allclose(server.center_flat, initial + 2 * update)
    assert server.running is False


@pytest.mark.slow  # shard processes: fresh interpreters
def test_every_shard_checks_the_secret(sharded):
    server = sharded()
    with pytest.raises(AuthenticationError):
        client(server, secret=new_secret())
    # Each shard on its own refuses a wrong secret too (no shard trusts another's check).
    for port in server.ports:
        with pytest.raises(AuthenticationError):
            ParameterServerClient("127.0.0.1", port, new_secret(), 0)


@pytest.mark.slow  # shard processes: fresh interpreters
def test_ports_out_of_order_and_another_layout_are_refused(sharded):
    server = sharded()
    with pytest.raises(RemoteProtocolError, match="given as shard 0 of 2"):
        ShardedClient("127.0.0.1", server.ports[::-1], SECRET, 0, layout=LAYOUT)
    other = Layout.of([np.zeros(20, np.float32)])
    with pytest.raises(LayoutMismatchError, match="slice has 10"):
        ShardedClient("127.0.0.1", server.ports, SECRET, 0, layout=other)


@pytest.mark.slow  # shard processes: fresh interpreters
def test_a_resent_commit_is_applied_once_on_every_shard(sharded):
    server = sharded()
    update = np.ones(LAYOUT.size, np.float32)
    with client(server) as c:
        c.commit(update)
        for sub in c.clients:  # resend with the same sequence number, shard by shard
            sub._seq -= 2
        c.commit(update)
        assert c.duplicates == 2
    np.testing.assert_allclose(server.center_flat, LAYOUT.flatten(WEIGHTS) + 1)
    assert server.stats().workers[0].duplicates == 1


@pytest.mark.slow  # shard processes: fresh interpreters
def test_tls_holds_on_every_shard(sharded, tmp_path):
    import ssl

    from distkeras_async.tls import write_self_signed_certificate

    cert, key = write_self_signed_certificate(tmp_path)
    server = sharded(tls_files=(cert, key))
    context = ssl.create_default_context(cafile=cert)
    with client(server, ssl_context=context) as c:
        np.testing.assert_array_equal(c.pull(), LAYOUT.flatten(WEIGHTS))
    for port in server.ports:  # plain TCP gets no welcome from any shard
        with pytest.raises((OSError, RemoteProtocolError, TimeoutError)):
            ParameterServerClient("127.0.0.1", port, SECRET, 0, connect_timeout=1, timeout=1)


@pytest.mark.slow  # shard processes: fresh interpreters
def test_driver_requests_and_epoch_centers_reach_every_shard(sharded):
    server = sharded(shards=2)
    server.keep_epoch_centers()
    server.request(learning_rate=0.5)
    with client(server) as c:
        c.commit_pull(np.ones(LAYOUT.size, np.float32))
        assert c.control.learning_rate == 0.5
        assert all(sub.control.learning_rate == 0.5 for sub in c.clients)
        c.report({"loss": 1.0}, [(1, 0.0, {"loss": 1.0})], epoch=1)
        wait_until(
            lambda: (
                (center := server.take_epoch_center(1)) is not None
                and bool(np.allclose(LAYOUT.flatten(center), LAYOUT.flatten(WEIGHTS) + 1))
            )
        )
    assert server.control.learning_rate == 0.5


# --------------------------------------------------------------------------- failures


@pytest.mark.slow  # shard processes: fresh interpreters
def test_a_rule_failing_on_one_shard_fails_the_round_on_all_of_them(sharded, rules_importable):
    # Synchronous rounds are all-or-nothing across shards: round 2 fails on shard 1 only,
    # and the center read afterwards is every shard at round 1.
    from shard_rules import POISON, FailingAverage

    server = sharded(FailingAverage, shards=2)
    first = np.full(LAYOUT.size, 2.0, np.float32)
    with client(server) as c:
        c.pull()
        np.testing.assert_array_equal(c.commit_pull(first), first)
        poisoned = first.copy()
        poisoned[-1] = POISON  # in shard 1's slice only
        with pytest.raises(RuleFailedError, match="poisoned slice"):
            c.commit_pull(poisoned)
    wait_until(lambda: server.failure is not None)
    assert "shard 1" in server.failure and "poisoned slice" in server.failure
    assert server.version == 1
    np.testing.assert_array_equal(server.center_flat, first)
    with pytest.raises(RuleFailedError, match="poisoned slice"):
        server.raise_for_failure()
    # Shard 0 applied round 2 and was failed by the driver: no worker gets through now.
    with pytest.raises((RunFailedError, OSError)):
        client(server).pull()


@pytest.mark.slow  # shard processes: fresh interpreters
def test_an_asynchronous_rule_failing_on_one_shard_fails_every_shard(sharded, rules_importable):
    from shard_rules import POISON, FailingDownpour

    server = sharded(FailingDownpour, shards=2)
    poisoned = np.zeros(LAYOUT.size, np.float32)
    poisoned[0] = POISON  # shard 0's slice
    with client(server) as c, pytest.raises(RuleFailedError):
        c.commit(poisoned)
    wait_until(lambda: server.failure is not None)
    assert server.failure.startswith("shard 0:")
    # The driver failed shard 1 as well: its workers are told at once.
    with pytest.raises(RunFailedError, match="shard 0"):
        ParameterServerClient("127.0.0.1", server.ports[1], SECRET, 0)


@pytest.mark.slow  # shard processes: fresh interpreters
def test_a_killed_shard_process_fails_the_run_and_nothing_hangs(sharded):
    server = sharded(shards=2)
    server._processes[1].process.send_signal(signal.SIGKILL)
    wait_until(lambda: server.failure is not None)
    assert server.failure.startswith("shard 1 exited with code")
    with pytest.raises(ServerError, match="shard 1 exited"):
        ParameterServerClient("127.0.0.1", server.ports[0], SECRET, 0)
    server.stop()  # returns although one shard is gone
    with pytest.raises(ShardError, match="the center was lost"):
        server.center_flat  # noqa: B018 - never the initial weights in its place


@pytest.mark.slow  # shard processes: fresh interpreters
def test_a_shard_process_exits_when_its_driver_goes_away():
    process = subprocess.Popen(
        [sys.executable, "-m", "distkeras_async.server.shard_process"], stdin=subprocess.PIPE
    )
    assert process.stdin is not None
    process.stdin.close()  # the driver died before configuring it
    assert process.wait(timeout=30) != 0 or process.returncode == 0


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.slow  # shard processes: fresh interpreters
def test_checkpoints_hold_the_whole_center_and_resume_with_any_shard_count(sharded, tmp_path):
    path = tmp_path / "center.npz"
    server = sharded(shards=2, checkpoint_path=path, checkpoint_every=1)
    update = np.ones(LAYOUT.size, np.float32)
    with client(server) as c:
        c.commit(update)
        c.commit(update)
    wait_until(lambda: path.exists() and load_checkpoint(path, LAYOUT).version == 2)
    expected = LAYOUT.flatten(WEIGHTS) + 2
    np.testing.assert_allclose(load_checkpoint(path, LAYOUT).center, expected)
    assert server.checkpoint(tmp_path / "now.npz") == 2
    resumed = sharded(shards=3, resume_from=path)
    assert resumed.version == 2
    np.testing.assert_allclose(resumed.center_flat, expected)
    with ParameterServer(
        WEIGHTS, "downpour", num_workers=1, secret=SECRET, resume_from=path
    ) as one:
        np.testing.assert_allclose(one.center_flat, expected)


@pytest.mark.slow  # shard processes: fresh interpreters
def test_an_overlapped_worker_commits_to_every_shard_with_its_base(sharded):
    from distkeras_async.worker.overlap import OverlappedClient

    server = sharded(shards=2)
    with client(server) as c, OverlappedClient(c) as overlapped:
        overlapped.pull()
        for _ in range(3):
            overlapped.commit_pull(np.ones(LAYOUT.size, np.float32))
    np.testing.assert_allclose(server.center_flat, LAYOUT.flatten(WEIGHTS) + 3)
    # Each shard counts staleness from the center the update came from (see test_overlap).
    assert [s.workers[0].staleness_total for s in server.shard_stats()] == [2, 2]


def test_the_default_count_never_turns_a_working_setting_into_an_error(monkeypatch):
    # A model the default would shard: a TLS context or an algorithm class only this
    # process can import keeps it at one in-process server; asked for explicitly, refused.
    import ssl

    import distkeras_async.server.factory as factory
    from distkeras_async.algorithms.downpour import Downpour

    class Local(Downpour):
        name = "test-local-downpour-default"

    monkeypatch.setattr(factory, "shard_count", lambda shards, weights: shards or 2)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for algorithm, tls in ((Local, None), ("downpour", context)):
        server = make_server(
            WEIGHTS, algorithm, shards=None, ssl_context=tls, num_workers=1, secret=SECRET
        )
        assert isinstance(server, ParameterServer)
    with pytest.raises(ValueError, match="cannot import a class defined in __main__"):
        make_server(WEIGHTS, Local, shards=2, num_workers=1, secret=SECRET)
