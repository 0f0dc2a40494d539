"""A failing rule, a bad update or a broken connection is contained where it happens.

A rule that raises fails the run at once, with its traceback and the algorithm's name, on
every worker and on the driver; a commit that would make the center non-finite is refused;
the published center is bit for bit what it was; and every model-sized buffer is back in its
pool afterwards, whichever point the failure hit.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from conftest import handshake, wait_until

from distkeras_async import (
    AlgorithmError,
    DeltaAlgorithm,
    HyperparameterError,
    ParameterServer,
    RoundFailedError,
    RuleFailedError,
    ServerError,
    UpdateMeta,
)
from distkeras_async.algorithm import Algorithm
from distkeras_async.algorithms.easgd import EASGD
from distkeras_async.errors import ErrorCode
from distkeras_async.wire.frames import Frame, encode_bytes
from distkeras_async.wire.schema import Op

N = 10


def ones(value: float = 1.0) -> np.ndarray:
    return np.full(N, value, np.float32)


class RaisesOnThirdCommit(DeltaAlgorithm):
    """DOWNPOUR whose server rule breaks on its third commit, after writing half the center."""

    name = "raises-on-third"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def server_update(self, out, center, updates, metas) -> None:
        self.calls += 1
        out[: N // 2] += updates[0][: N // 2]  # a half-done update must never be published
        if self.calls == 3:
            raise RuntimeError("boom in the rule")
        out[N // 2 :] += updates[0][N // 2 :]


class RoundRaises(EASGD):
    name = "round-raises"
    synchronous = True

    def server_update(
        self,
        out: np.ndarray,
        center: np.ndarray,
        updates: Sequence[np.ndarray],
        metas: Sequence[UpdateMeta],
    ) -> None:
        out += 1.0
        raise ZeroDivisionError("round rule divided by zero")


def quiet(server: ParameterServer) -> None:
    """Wait until the server holds no buffer but the published center."""
    wait_until(
        lambda: (s := server.stats()).receive_buffers_in_use == 0 and s.center_buffers_in_use == 1
    )


def still_serves(server: ParameterServer, connect, worker: int = 0, attempt: int = 50) -> None:
    client = connect(server, worker, attempt=attempt)
    before = client.pull()
    np.testing.assert_array_equal(client.commit_pull(np.ones_like(before)), before + 1)


# --------------------------------------------------------------------------- rules that raise


def test_a_raising_rule_fails_the_run_everywhere_at_once(make_server, connect, raw_peer, secret):
    server = make_server(algorithm=RaisesOnThirdCommit, num_workers=2)
    watcher = raw_peer(server.port, timeout=20)
    handshake(watcher, secret, worker=1)  # connected, idle: must hear of the failure at once
    client = connect(server, 0)
    client.commit(ones())
    client.commit(ones())
    before = server.center_flat
    with pytest.raises(RuleFailedError, match="boom in the rule") as caught:
        client.commit(ones(5.0))
    # The worker's error names the algorithm and the rule, and carries the traceback.
    assert "algorithm 'raises-on-third': server_update raised RuntimeError" in str(caught.value)
    assert "Traceback" in str(caught.value)
    # The idle worker was sent the error without asking (no request of its own).
    pushed = watcher.receive()
    assert pushed is not None and pushed.op is Op.ERROR
    assert pushed.fields["code"] == ErrorCode.RULE_FAILED
    assert "boom in the rule" in pushed.fields["message"]
    # The driver raises the same failure, traceback included, with the rule's own line.
    with pytest.raises(RuleFailedError, match="server_update raised RuntimeError") as driver:
        server.raise_for_failure()
    assert 'raise RuntimeError("boom in the rule")' in str(driver.value)
    assert server.failure_code is ErrorCode.RULE_FAILED
    # Half of the center was written by the rule before it raised: none of it was published.
    np.testing.assert_array_equal(server.center_flat, before)
    assert server.version == 2
    quiet(server)
    # A failed run refuses newcomers with the same failure and code.
    with pytest.raises(RuleFailedError, match="boom in the rule"):
        connect(server, 1, attempt=9)


def test_a_raising_round_rule_fails_every_worker_of_the_round(make_server, connect):
    server = make_server(
        algorithm=RoundRaises, num_workers=2, rho=1.0, learning_rate=0.1, round_timeout=60
    )
    errors = _commit_pull_in_threads([connect(server, 0), connect(server, 1)], ones())
    assert len(errors) == 2
    assert all(isinstance(e, RuleFailedError) for e in errors), errors
    assert all("server_update raised ZeroDivisionError" in str(e) for e in errors)
    np.testing.assert_array_equal(server.center_flat, np.zeros(N))
    assert server.version == 0
    quiet(server)


def test_validate_workers_that_raises_is_a_rule_failure_before_anything_starts(secret):
    class BadValidation(DeltaAlgorithm):
        name = "bad-validation"

        def validate_workers(self, num_workers: int) -> None:
            raise KeyError("no such key")

    with pytest.raises(RuleFailedError, match="'bad-validation': validate_workers raised KeyError"):
        ParameterServer([np.zeros(N, np.float32)], BadValidation, num_workers=2, secret=secret)

    class Refuses(DeltaAlgorithm):
        name = "refuses"

        def validate_workers(self, num_workers: int) -> None:
            raise HyperparameterError("too many workers for this rule")

    # A deliberate refusal stays what it is.
    with pytest.raises(HyperparameterError, match="too many workers"):
        ParameterServer([np.zeros(N, np.float32)], Refuses, num_workers=2, secret=secret)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"synchronous": "yes", "server_update": DeltaAlgorithm.server_update}, "must be True"),
        ({"synchronous": False}, "does not define server_update"),
        (
            {"server_update": DeltaAlgorithm.server_update, "server_apply": lambda *a: None},
            "contract version 2",
        ),
    ],
)
def test_a_wrong_synchronous_flag_is_refused_before_the_server_starts(attributes, message, secret):
    broken = type("Broken", (Algorithm,), {"name": "broken", **attributes})
    with pytest.raises(AlgorithmError, match=message):
        ParameterServer([np.zeros(N, np.float32)], broken, num_workers=1, secret=secret)


def test_a_subclass_that_redefines_the_server_rule_is_what_runs(make_server, connect):
    """DeltaAlgorithm's rule is linear and writes all of out; a subclass's own rule, without
    either promise, runs on a copy of the center (no in-place path)."""

    class Halves(DeltaAlgorithm):
        name = "halves"

        def server_update(self, out, center, updates, metas) -> None:
            out += 0.5 * updates[0]

    server = make_server(algorithm=Halves)
    client = connect(server)
    client.commit(ones(2.0))
    np.testing.assert_array_equal(server.center_flat, ones(1.0))


# --------------------------------------------------------------------------- non-finite centers


def test_a_commit_that_would_overflow_is_refused_and_changes_nothing(make_server, connect):
    server = make_server()
    client = connect(server)
    client.commit(ones(3e38))
    before = server.center_flat
    with pytest.raises(ServerError, match="not be finite") as caught:
        client.commit(ones(3e38))  # finite, but 3e38 + 3e38 is infinity in float32
    assert caught.value.code is ErrorCode.BAD_UPDATE
    assert server.center_flat.tobytes() == before.tobytes()  # bit for bit
    assert server.version == 1
    assert server.failure is None  # a refused commit does not fail an asynchronous run
    quiet(server)
    other = connect(server, 1)
    np.testing.assert_array_equal(other.pull(), before)


def test_a_synchronous_round_that_would_overflow_fails_the_run(make_server, connect):
    server = make_server(algorithm="averaging", num_workers=2, round_timeout=60)
    errors = _commit_pull_in_threads([connect(server, 0), connect(server, 1)], ones(3e38))
    # The mean's running sum overflows: the round is refused, the run fails, and the center
    # is still the initial one.
    assert len(errors) == 2 and all(isinstance(e, RoundFailedError) for e in errors), errors
    assert all("not be finite" in str(e) for e in errors)
    assert server.center_flat.tobytes() == np.zeros(N, np.float32).tobytes()
    quiet(server)


def _commit_pull_in_threads(clients, update: np.ndarray) -> list[BaseException]:
    errors: list[BaseException] = []

    def commit(client) -> None:
        try:
            client.commit_pull(update)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_a_rule_that_produces_nan_from_finite_updates_is_refused(make_server, connect):
    class Divides(DeltaAlgorithm):
        name = "divides"

        def server_update(self, out, center, updates, metas) -> None:
            out += updates[0] / (updates[0] - updates[0])  # 0/0 on every element

    server = make_server(algorithm=Divides)
    client = connect(server)
    with pytest.raises(ServerError, match="not be finite"):
        client.commit(ones())
    np.testing.assert_array_equal(server.center_flat, np.zeros(N))
    quiet(server)


def test_linear_rules_update_in_place_when_nothing_reads_the_center(make_server, connect):
    server = make_server()
    client = connect(server)
    for _ in range(5):
        client.commit(ones())
    stats = server.stats()
    # DOWNPOUR is a bounded linear update: no spare buffer was ever needed.
    assert stats.in_place_updates == 5 and stats.center_buffers == 1
    np.testing.assert_array_equal(server.center_flat, ones(5.0))


def test_large_finite_values_fall_back_to_a_spare_buffer_and_are_accepted(make_server, connect):
    server = make_server()
    client = connect(server)
    client.commit(ones(1e38))
    client.commit(ones(1e38))  # 2e38 is finite, but too close to the limit to prove in place
    np.testing.assert_array_equal(server.center_flat, ones(2e38))
    stats = server.stats()
    assert stats.in_place_updates == 1 and stats.center_buffers == 2


def test_only_the_class_that_promises_a_linear_update_keeps_the_promise():
    class Scaled(DeltaAlgorithm):  # redefines the rule DeltaAlgorithm promised about
        name = "scaled"

        def server_update(self, out, center, updates, metas) -> None:
            np.multiply(center, 10.0, out=out)

    class Promised(Scaled):
        name = "promised"
        linear_update = True

    assert DeltaAlgorithm().promises_linear_update()
    assert not Scaled().promises_linear_update() and not Scaled.writes_all
    assert Promised().promises_linear_update()
    assert not Algorithm().promises_linear_update()


def test_a_linear_rule_that_raises_in_place_says_so(make_server, connect):
    class BrokenPromise(DeltaAlgorithm):
        name = "broken-promise"
        linear_update = True

        def server_update(self, out, center, updates, metas) -> None:
            raise RuntimeError("broke its promise")

    server = make_server(algorithm=BrokenPromise)
    client = connect(server)
    with pytest.raises(RuleFailedError, match="may be partly updated"):
        client.commit(ones())


# --------------------------------------------------------------------------- buffer ownership


def _commit_frame(seq: int, update: np.ndarray, op: Op = Op.COMMIT) -> bytes:
    return encode_bytes(Frame(op, 0, 0, seq, tensors=(update,)))


def test_disconnect_mid_frame_returns_the_receive_buffer(make_server, connect, raw_peer, secret):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    frame = _commit_frame(1, ones())
    peer.send_raw(frame[: len(frame) - 7])  # the payload buffer is taken, the frame unfinished
    wait_until(lambda: server.stats().receive_buffers_in_use == 1)
    peer.close()
    quiet(server)
    still_serves(server, connect)


def test_a_bad_frame_behind_a_queued_commit_releases_its_buffer(
    make_server, connect, raw_peer, secret
):
    """A peer that does not read its 16 MB center is write-blocked: its next commit is
    received (into a pooled buffer) and queued, and then it sends garbage. The decode error
    closes the connection, and the queued commit's buffer goes back to the pool."""
    n = 4_000_000
    server = make_server(weights=[np.zeros(n, np.float32)])
    peer = raw_peer(server.port, timeout=30)
    handshake(peer, secret)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    peer.send(Frame(Op.PULL, 0, 0, 1))  # its reply cannot leave at once
    peer.send_raw(_commit_frame(2, np.ones(n, np.float32)))
    wait_until(lambda: server.stats().receive_buffers_in_use == 1)
    peer.send_raw(b"\xff" * 64)  # a header length far over the limit
    wait_until(lambda: server.stats().connections == 0)
    assert server.version == 0  # the queued commit was never applied
    quiet(server)
    still_serves(server, connect)


def test_a_worker_gone_before_its_reply_leaves_nothing_behind(
    make_server, connect, raw_peer, secret
):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send_raw(_commit_frame(1, ones(), Op.COMMIT_PULL))
    peer.sock.shutdown(socket.SHUT_RDWR)
    peer.close()
    wait_until(lambda: server.version == 1 and server.stats().connections == 0)
    quiet(server)
    still_serves(server, connect)


def test_a_reader_that_never_reads_its_center_returns_the_buffer_when_dropped(
    make_server, connect, raw_peer, secret
):
    n = 4_000_000  # 16 MB: the reply cannot leave at once, so its center buffer stays held
    server = make_server(weights=[np.zeros(n, np.float32)], send_timeout=1.0)
    stuck = raw_peer(server.port, timeout=30)
    handshake(stuck, secret)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    stuck.send(Frame(Op.PULL, 0, 0, 1))
    client = connect(server, 1)
    client.commit(np.ones(n, np.float32))  # the stuck reader's version stays held meanwhile
    wait_until(lambda: server.stats().center_buffers_in_use == 2)
    wait_until(lambda: server.stats().connections == 1, timeout=30)  # dropped by send_timeout
    quiet(server)


def test_a_rule_failure_with_queued_commits_releases_every_buffer(make_server, connect):
    """Commits queued behind the failing one (waiting for a center buffer) are released."""
    server = make_server(algorithm=RaisesOnThirdCommit, num_workers=4, receive_buffers=4)
    clients = [connect(server, w) for w in range(4)]
    errors: list[BaseException] = []

    def hammer(client) -> None:
        try:
            for _ in range(20):
                client.commit(ones())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == 4 and all(isinstance(e, RuleFailedError) for e in errors), errors
    assert server.version == 2
    quiet(server)
