"""The parameter server and client over real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import handshake, serve_handshake, wait_until

from distkeras_async import (
    AuthenticationError,
    ConnectionClosedError,
    HyperparameterError,
    ParameterServer,
    ParameterServerClient,
    RemoteProtocolError,
    RoundFailedError,
    ServerError,
    UnknownAlgorithmError,
    WorkerReportedError,
)
from distkeras_async.wire import auth
from distkeras_async.wire.frames import Frame, encode_bytes
from distkeras_async.wire.schema import Op

N = 10  # parameters of the default test model: (2, 3) + (4,)
# A worker's silence in the timeout tests: past a 0.5 s frame timeout and the server's 1 s sweep.
QUIET = 2.0


def ones(value: float = 1.0, n: int = N) -> np.ndarray:
    return np.full(n, value, np.float32)


# --------------------------------------------------------------------------- basics


def test_pull_commit_commit_pull_report(make_server, connect):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
    server = make_server(weights)
    client = connect(server)
    assert client.num_params == N
    assert client.algorithm_name == "downpour"
    assert client.hyperparameters == {
        "communication_window": 5,
        "commit_dtype": "float32",
        "pull_dtype": "float32",
    }
    np.testing.assert_array_equal(client.pull(), [0, 1, 2, 3, 4, 5, 1, 1, 1, 1])
    client.commit(ones(0.5))
    assert client.version == 1
    out = np.empty(N, np.float32)
    result = client.commit_pull(ones(2.0), out=out)
    assert result is out
    np.testing.assert_array_equal(out, np.array([0, 1, 2, 3, 4, 5, 1, 1, 1, 1]) + 2.5)
    client.report({"loss": 0.25, "accuracy": 0.5})
    center = server.center
    assert [c.shape for c in center] == [(2, 3), (4,)]
    np.testing.assert_array_equal(center[1], [3.5] * 4)
    stats = server.stats()
    assert stats.version == 2 and stats.commits == 2
    assert stats.workers[0].commits == 2
    assert stats.workers[0].pulls == 2
    assert stats.workers[0].last_loss == 0.25
    assert stats.bytes_in > 2 * N * 4 and stats.bytes_out > 2 * N * 4


def test_center_keeps_each_tensors_dtype(make_server):
    weights = [np.ones((2, 2), np.float64), np.zeros(3, np.float16)]
    server = make_server(weights)
    center = server.center
    assert [c.dtype for c in center] == [np.float64, np.float16]


def test_constructor_validates(secret):
    weights = [np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match="num_workers"):
        ParameterServer(weights, "downpour", num_workers=0, secret=secret)
    with pytest.raises(ValueError, match="secret"):
        ParameterServer(weights, "downpour", num_workers=1, secret=b"short")
    with pytest.raises(UnknownAlgorithmError, match="downpour"):
        ParameterServer(weights, "nope", num_workers=1, secret=secret)
    with pytest.raises(HyperparameterError, match="communication_window"):
        ParameterServer(weights, "downpour", num_workers=1, secret=secret, communication_window=0)
    with pytest.raises(ValueError, match="round_timeout"):
        ParameterServer(weights, "easgd", num_workers=1, secret=secret, round_timeout=0)
    with pytest.raises(HyperparameterError, match="num_workers"):
        ParameterServer(weights, "easgd", num_workers=4, secret=secret, learning_rate=0.1)
    with pytest.raises(TypeError, match="floating-point"):
        ParameterServer([np.zeros(3, np.int32)], "downpour", num_workers=1, secret=secret)


def test_busy_port_gives_a_clear_error(make_server, secret):
    server = make_server()
    other = ParameterServer(
        [np.zeros(3, np.float32)], "downpour", num_workers=1, secret=secret, port=server.port
    )
    with pytest.raises(OSError, match=f"127.0.0.1:{server.port}.*already in use"):
        other.start()


def test_stop_is_bounded_frees_the_port_and_leaves_no_thread(secret):
    server = ParameterServer([np.zeros(1000, np.float32)], "downpour", num_workers=4, secret=secret)
    port = server.start()
    clients = [ParameterServerClient("127.0.0.1", port, secret, i, timeout=5) for i in range(3)]
    clients[0].pull()
    server.stop()
    assert not server.running
    assert not [t for t in threading.enumerate() if t.name == "distkeras-parameter-server"]
    # The port is free at once.
    with socket.create_server(("127.0.0.1", port)):
        pass
    for client in clients:
        with pytest.raises((ConnectionClosedError, OSError)):
            client.pull()
    server.stop()  # idempotent


def test_running_only_once_the_server_can_be_read(secret, monkeypatch):
    # The server thread is alive a moment before it has built its state; a reader that polls
    # `running` and then calls `stats()` must never be told the server has not started.
    from distkeras_async.server import parameter_server

    building, go_on = threading.Event(), threading.Event()
    real = parameter_server.ServerCore

    def slow_core(*args, **kwargs):
        building.set()
        go_on.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(parameter_server, "ServerCore", slow_core)
    server = ParameterServer([np.zeros(3, np.float32)], "downpour", num_workers=1, secret=secret)
    starter = threading.Thread(target=server.start)
    starter.start()
    try:
        assert building.wait(10)
        assert [t for t in threading.enumerate() if t.name == "distkeras-parameter-server"]
        assert not server.running
    finally:
        go_on.set()
        starter.join(10)
    assert server.running
    assert server.stats().version == 0
    server.stop()


# --------------------------------------------------------------------------- authentication


def test_wrong_secret_is_rejected_and_changes_nothing(make_server, connect):
    server = make_server()
    with pytest.raises(AuthenticationError):
        connect(server, secret=auth.new_secret())
    assert server.stats().rejected == 1
    assert server.version == 0


def test_tensors_before_handshake_are_refused_before_allocation(make_server, raw_peer):
    server = make_server()
    peer = raw_peer(server.port)
    assert peer.receive().op is Op.CHALLENGE
    peer.send(Frame(Op.COMMIT, tensors=(ones(),)))
    reply = peer.receive()
    assert reply is not None and reply.op is Op.ERROR
    assert "handshake" in reply.fields["message"]
    assert peer.closed_by_server()
    stats = server.stats()
    assert stats.receive_buffers == 0 and stats.version == 0


def test_replayed_proof_from_another_connection_fails(make_server, raw_peer, secret):
    server = make_server()
    first = raw_peer(server.port)
    challenge = first.receive()
    proof = auth.client_proof(secret, challenge.fields["nonce"], 0, 0)
    second = raw_peer(server.port)
    second.receive()
    second.send(Frame(Op.HELLO, 0, 0, 0, {"proof": proof, "nonce": auth.new_nonce()}))
    reply = second.receive()
    assert reply.op is Op.ERROR and reply.fields["message"] == "authentication failed"
    # The proof is bound to the worker id too: relabelling it fails on its own connection.
    first.send(Frame(Op.HELLO, 1, 0, 0, {"proof": proof, "nonce": auth.new_nonce()}))
    assert first.receive().op is Op.ERROR


def test_client_rejects_an_impostor_server(secret):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def impostor() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(encode_bytes(Frame(Op.CHALLENGE, fields={"nonce": auth.new_nonce()})))
            with contextlib.suppress(OSError):
                conn.recv(4096)
            conn.sendall(
                encode_bytes(
                    Frame(
                        Op.WELCOME,
                        fields={
                            "proof": bytes(32),
                            "layout": [["float32", [3]]],
                            "algorithm": "downpour",
                            "hyperparameters": {},
                            "version": 0,
                            "num_workers": 1,
                            "synchronous": False,
                            "next_seq": 0,
                            "reply_timeout": 10.0,
                            "progress": 0,
                        },
                    )
                )
            )
            with contextlib.suppress(OSError):
                conn.recv(4096)

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    with pytest.raises(AuthenticationError, match="prove"):
        ParameterServerClient("127.0.0.1", port, secret, 0, timeout=5)
    thread.join(5)
    listener.close()


def _silent_after_handshake(listener: socket.socket, secret: bytes, handshake: bool) -> None:
    """A server that accepts, optionally completes a real handshake, then never answers."""
    conn, _ = listener.accept()
    with conn:
        if handshake:
            serve_handshake(conn, secret, {})
        with contextlib.suppress(OSError):
            while conn.recv(1 << 16):  # read whatever comes, answer nothing
                pass


@pytest.mark.parametrize("stage", ["handshake", "request"])
def test_every_client_call_times_out_on_a_silent_server(secret, stage):
    """A server that stops answering never hangs a worker: the handshake is bounded by
    connect_timeout, every request by timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(
        target=_silent_after_handshake, args=(listener, secret, stage == "request"), daemon=True
    )
    thread.start()
    try:
        if stage == "handshake":
            with pytest.raises(TimeoutError):
                ParameterServerClient("127.0.0.1", port, secret, 0, connect_timeout=0.5)
        else:
            client = ParameterServerClient("127.0.0.1", port, secret, 0, timeout=0.5)
            with pytest.raises(TimeoutError, match="no 'center' reply"):
                client.pull()
            with pytest.raises(ConnectionClosedError):  # a timed-out client is closed
                client.commit(np.ones(3, np.float32))
    finally:
        listener.close()
        thread.join(10)


def test_worker_id_out_of_range(make_server, connect):
    server = make_server(num_workers=2)
    with pytest.raises(ServerError, match="out of range"):
        connect(server, worker=2)


# --------------------------------------------------------------------------- bad commits


@pytest.mark.parametrize(
    ("size", "reason"), [(N - 1, "10 elements"), (N + 1, "exceeds the limit of 40")]
)
def test_layout_mismatch_is_rejected_and_center_untouched(
    make_server, raw_peer, secret, size, reason
):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send(Frame(Op.COMMIT, 0, 0, 1, tensors=(ones(n=size),)))
    reply = peer.receive()
    assert reply.op is Op.ERROR and reason in reply.fields["message"]
    assert peer.closed_by_server()
    assert server.version == 0
    np.testing.assert_array_equal(server.center_flat, np.zeros(N))


def test_wrong_dtype_is_rejected(make_server, raw_peer, secret):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send(Frame(Op.COMMIT, 0, 0, 1, tensors=(np.ones(N, np.float64),)))
    assert peer.receive().op is Op.ERROR
    assert server.version == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_rejected(make_server, connect, bad):
    server = make_server()
    client = connect(server)
    update = ones()
    update[3] = bad
    with pytest.raises(ServerError, match="NaN or infinity"):
        client.commit(update)
    assert server.version == 0
    np.testing.assert_array_equal(server.center_flat, np.zeros(N))


def test_huge_but_finite_update_is_accepted(make_server, connect):
    server = make_server()
    client = connect(server)
    client.commit(ones(3e30))  # its dot product overflows; the exact check accepts it
    assert server.version == 1


def test_unexpected_op_closes_the_connection(make_server, raw_peer, secret):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send(Frame(Op.CENTER, 0, 0, 1, {"version": 0}, tensors=(ones(),)))
    reply = peer.receive()
    assert reply.op is Op.ERROR and reply.fields["code"] == "protocol"
    assert peer.closed_by_server()  # the close itself, observed: EOF after the error frame
    assert server.version == 0
    wait_until(lambda: server.stats().connections == 0)


def test_garbage_after_handshake_closes_only_that_connection(
    make_server, raw_peer, connect, secret
):
    server = make_server()
    good = connect(server, worker=1)
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send_raw(b"\x05\x00\x00\x00not msgpack at all")
    reply = peer.receive()
    assert reply.op is Op.ERROR and "msgpack" in reply.fields["message"]
    assert peer.closed_by_server()
    good.commit(ones())
    assert server.version == 1
    peer.close()  # ends the server's lingering close
    wait_until(lambda: server.stats().connections == 1)  # the good one is still connected


# --------------------------------------------------------------------------- identity of commits


def test_resent_commit_is_applied_once(make_server, raw_peer, secret):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    frame = Frame(Op.COMMIT, 0, 0, 7, tensors=(ones(),))
    peer.send(frame)
    first = peer.receive()
    peer.send(frame)
    second = peer.receive()
    assert first.op is Op.ACK and not first.fields.get("duplicate")
    assert second.op is Op.ACK and second.fields["duplicate"] is True
    np.testing.assert_array_equal(server.center_flat, ones())
    stats = server.stats()
    assert stats.commits == 1 and stats.workers[0].duplicates == 1


def test_retried_task_continues_and_stale_attempt_is_refused(make_server, connect):
    server = make_server()
    first = connect(server, worker=0, attempt=0)
    first.commit(ones())
    retry = connect(server, worker=0, attempt=1)
    # The retry's sequence numbers start again at 0: a new attempt is a new identity.
    retry.commit(ones())
    np.testing.assert_array_equal(server.center_flat, ones(2.0))
    with pytest.raises((ServerError, ConnectionClosedError)):
        first.commit(ones())  # replaced by the newer attempt
    with pytest.raises(ServerError, match="stale"):
        connect(server, worker=0, attempt=0)
    np.testing.assert_array_equal(server.center_flat, ones(2.0))


# --------------------------------------------------------------------------- staleness


def test_staleness_is_counted_per_worker(make_server, connect):
    server = make_server(algorithm="dynsgd")
    a, b = connect(server, 0), connect(server, 1)
    a.pull()
    b.pull()
    a.commit(ones(1.0))  # staleness 0 -> +1
    a.commit(ones(1.0))  # a has not pulled since: staleness 1 -> +0.5
    b.commit(ones(3.0))  # b pulled at version 0, version is 2: staleness 2 -> +1
    np.testing.assert_allclose(server.center_flat, ones(2.5))
    stats = server.stats()
    assert stats.workers[0].staleness_max == 1 and stats.workers[1].staleness_last == 2


# --------------------------------------------------------------------------- synchronous rounds


def _in_threads(fns):
    results: dict[int, object] = {}

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    return [results[i] for i in range(len(fns))]


def test_synchronous_round_answers_everyone_with_the_new_center(make_server, connect):
    server = make_server(algorithm="averaging", num_workers=3)
    clients = [connect(server, i) for i in range(3)]
    for c in clients:
        c.pull()
    outs = _in_threads(
        [lambda c=c, i=i: c.commit_pull(ones(float(i))) for i, c in enumerate(clients)]
    )
    for out in outs:
        np.testing.assert_array_equal(out, ones(1.0))
    assert server.version == 1 and server.stats().rounds == 1
    outs = _in_threads(
        [lambda c=c, i=i: c.commit_pull(ones(3.0 * i)) for i, c in enumerate(clients)]
    )
    for out in outs:
        np.testing.assert_array_equal(out, ones(3.0))  # nothing carried over from round 1
    assert server.version == 2


def test_round_continues_without_a_worker_that_finished(make_server, connect):
    server = make_server(algorithm="averaging", num_workers=2)
    a, b = connect(server, 0), connect(server, 1)
    results = _in_threads([lambda: a.commit_pull(ones(4.0)), b.close])
    np.testing.assert_array_equal(results[0], ones(4.0))
    assert server.failure is None


def test_round_timeout_fails_every_worker_and_the_driver(make_server, connect):
    server = make_server(algorithm="averaging", num_workers=2, round_timeout=0.5)
    a = connect(server, 0)
    # The client waits round_timeout + 30 s at most; the server's 0.5 s timeout answers first.
    with pytest.raises(RoundFailedError, match=r"timed out after 0.5 s.*\[1\] did not commit"):
        a.commit_pull(ones())
    with pytest.raises(RoundFailedError, match="timed out"):
        server.raise_for_failure()
    # A failed run refuses everything afterwards, with the same reason and code.
    with pytest.raises(RoundFailedError, match="timed out"):
        connect(server, 1)
    np.testing.assert_array_equal(server.center_flat, np.zeros(N))


def test_the_welcome_says_how_long_a_commit_s_reply_may_take(make_server, connect):
    # A synchronous commit waits for its round: the client waits the server's round timeout
    # and a margin (so the server's own error arrives first), and no less than its timeout.
    synchronous = connect(make_server(algorithm="averaging", num_workers=1, round_timeout=500))
    assert synchronous.welcome.reply_timeout == 530.0
    assert synchronous._sock.gettimeout() == 530.0
    asynchronous = connect(make_server(num_workers=1, round_timeout=500))
    assert asynchronous.welcome.reply_timeout == 0.0
    assert asynchronous.reply_timeout(7.0) == 7.0


def test_worker_dying_mid_round_fails_the_round(make_server, connect, raw_peer, secret):
    server = make_server(algorithm="easgd", num_workers=2, round_timeout=60)
    a = connect(server, 0)
    peer = raw_peer(server.port)
    handshake(peer, secret, worker=1)

    def die_once_worker_0_waits() -> None:
        wait_until(lambda: server.stats().round_waiting == 1)
        peer.close()

    result = _in_threads([lambda: a.commit_pull(ones(0.1)), die_once_worker_0_waits])
    assert isinstance(result[0], RoundFailedError)
    assert "worker 1 disconnected" in str(result[0])
    assert server.failure is not None


def test_worker_reported_error_fails_a_synchronous_run(make_server, connect):
    server = make_server(algorithm="averaging", num_workers=2)
    a, b = connect(server, 0), connect(server, 1)
    b.report_error("ValueError: bad batch")
    with pytest.raises(WorkerReportedError, match="bad batch"):
        a.commit_pull(ones())


def test_committing_twice_in_one_round_is_an_error(make_server, raw_peer, secret, connect):
    server = make_server(algorithm="averaging", num_workers=2)
    peer = raw_peer(server.port)
    handshake(peer, secret, worker=0)
    peer.send(Frame(Op.COMMIT, 0, 0, 1, tensors=(ones(),)))
    peer.send(Frame(Op.COMMIT, 0, 0, 2, tensors=(ones(),)))
    b = connect(server, 1)
    results = _in_threads([lambda: b.commit_pull(ones(3.0))])
    np.testing.assert_array_equal(results[0], ones(2.0))
    # The second commit is queued behind the first (replies stay in order); it joins round 2.
    ack = peer.receive()
    assert ack.op is Op.ACK and ack.fields["version"] == 1


# --------------------------------------------------------------------------- limits


def test_too_many_connections(make_server, raw_peer):
    server = make_server(max_connections=2)
    peers = [raw_peer(server.port) for _ in range(2)]
    for p in peers:
        assert p.receive().op is Op.CHALLENGE
    third = raw_peer(server.port)
    reply = third.receive()
    assert reply.op is Op.ERROR and "too many connections" in reply.fields["message"]


def test_handshake_timeout_closes_silent_connections(make_server, raw_peer):
    server = make_server(handshake_timeout=0.5)
    peer = raw_peer(server.port)
    assert peer.receive().op is Op.CHALLENGE
    reply = peer.receive()
    assert reply.op is Op.ERROR and "handshake" in reply.fields["message"]
    assert reply.fields["code"] == "limit"
    assert peer.closed_by_server()


def test_idle_timeout(make_server, connect):
    server = make_server(idle_timeout=0.5)
    client = connect(server)
    client.pull()
    wait_until(lambda: server.stats().connections == 0)
    with pytest.raises((ServerError, ConnectionClosedError, OSError)):
        client.pull()


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_quiet_worker_is_not_cut_by_the_frame_timeout(make_server, connect, use_uvloop):
    """Silence between two frames is idle time: a worker computing a window for longer than
    the frame timeout goes on. uvloop asks for the next read buffer as soon as a read ends,
    which once started the frame timer (and dropped any worker quiet for over 60 s)."""
    server = make_server(frame_timeout=0.5, idle_timeout=30, use_uvloop=use_uvloop)
    client = connect(server)
    client.pull()
    time.sleep(QUIET)  # ok: the silence under test (the server sweeps its timers every 1 s)
    center = client.commit_pull(np.ones(N, np.float32))
    assert server.version == 1 and center[0] == 1.0
    assert server.stats().rejected == 0


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_round_waits_for_a_worker_quiet_past_the_frame_timeout(make_server, connect, use_uvloop):
    """A synchronous round whose slowest worker is slow but alive completes: neither the
    worker waiting in the round nor the quiet one is cut by the frame timeout."""
    server = make_server(
        algorithm="averaging", frame_timeout=0.5, round_timeout=30, use_uvloop=use_uvloop
    )
    clients = [connect(server, worker) for worker in range(2)]
    for client in clients:
        client.pull()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(clients[0].commit_pull, np.full(N, 2.0, np.float32))
        time.sleep(QUIET)  # ok: worker 1 computes its window while worker 0 waits
        second = clients[1].commit_pull(np.full(N, 4.0, np.float32))
        assert first.result(timeout=30).tolist() == second.tolist()
    assert server.stats().rounds == 1 and server.stats().rejected == 0


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_slow_frame_times_out(make_server, raw_peer, secret, use_uvloop):
    server = make_server(frame_timeout=0.5, use_uvloop=use_uvloop)
    peer = raw_peer(server.port)
    handshake(peer, secret)
    frame = encode_bytes(Frame(Op.COMMIT, 0, 0, 1, tensors=(ones(),)))
    peer.send_raw(frame[:10])  # and never the rest
    reply = peer.receive()
    assert reply.op is Op.ERROR and "not completed" in reply.fields["message"]
    assert server.version == 0


# --------------------------------------------------------------------------- concurrency


def test_many_clients_exact_sum(make_server, connect):
    workers, commits = 8, 40
    server = make_server(weights=[np.zeros(1000, np.float32)], num_workers=workers)
    clients = [connect(server, i) for i in range(workers)]

    def work(i):
        client = clients[i]
        for k in range(commits):
            delta = np.full(1000, float(i + 1), np.float32)
            if k % 2:
                client.commit(delta)
            else:
                client.commit_pull(delta)
        return True

    assert all(r is True for r in _in_threads([lambda i=i: work(i) for i in range(workers)]))
    expected = commits * sum(range(1, workers + 1))
    np.testing.assert_array_equal(server.center_flat, np.full(1000, expected, np.float32))
    stats = server.stats()
    assert stats.commits == workers * commits == stats.version
    assert stats.receive_buffers == 1  # the pool stayed bounded under contention


def test_a_center_being_sent_is_never_modified(make_server, connect, raw_peer, secret):
    """A slow reader gets the center as it was when it asked, even while others commit."""
    n = 4_000_000  # 16 MB: more than loopback buffers absorb, so the send stays pending
    server = make_server(weights=[np.zeros(n, np.float32)], num_workers=2)
    slow = raw_peer(server.port, timeout=30)
    handshake(slow, secret, worker=0)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.send(Frame(Op.PULL, 0, 0, 1))
    fast = connect(server, worker=1)
    for _ in range(3):
        fast.commit(np.ones(n, np.float32))
    center = slow.receive()
    assert center.op is Op.CENTER and center.fields["version"] == 0
    assert not center.tensors[0].any()  # all zeros: not a torn mix of versions
    np.testing.assert_array_equal(fast.pull()[:5], [3.0] * 5)
    # The slow reader's version stays in its own buffer; the commits went to a second one
    # (the first into it as a spare, the next two in place: nothing read it meanwhile).
    assert server.stats().center_buffers == 2


def test_a_new_client_of_the_same_worker_and_attempt_is_not_mistaken_for_resends(
    make_server, connect
):
    server = make_server()
    first = connect(server, worker=0)
    for _ in range(3):
        first.commit(ones())
    first.close()
    second = connect(server, worker=0)  # same worker, same attempt, a new process say
    second.commit(ones())
    assert second.duplicates == 0
    np.testing.assert_array_equal(server.center_flat, ones(4.0))


def test_resent_commit_pull_is_flagged_and_applied_once(make_server, raw_peer, secret):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret)
    frame = Frame(Op.COMMIT_PULL, 0, 0, 3, tensors=(ones(),))
    peer.send(frame)
    first = peer.receive()
    peer.send(frame)
    second = peer.receive()
    assert first.op is Op.CENTER and "duplicate" not in first.fields
    assert second.op is Op.CENTER and second.fields["duplicate"] is True
    np.testing.assert_array_equal(second.tensors[0], ones())


def test_client_rejects_tensors_before_the_welcome(secret):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def rogue() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(encode_bytes(Frame(Op.CENTER, fields={"version": 0}, tensors=(ones(),))))
            with contextlib.suppress(OSError):
                conn.recv(4096)

    thread = threading.Thread(target=rogue, daemon=True)
    thread.start()
    with pytest.raises(RemoteProtocolError, match="unexpected tensors"):
        ParameterServerClient("127.0.0.1", port, secret, 0, timeout=5)
    thread.join(5)
    listener.close()


def test_the_drivers_requests_ride_on_every_reply(make_server, connect):
    server = make_server([np.zeros(4, np.float32)], "downpour", num_workers=1)
    client = connect(server, 0)
    center = client.pull()
    assert client.control.stop is False and client.control.learning_rate is None
    server.request(learning_rate=0.002)
    client.commit(np.zeros_like(center))  # an Ack carries it
    assert client.control.learning_rate == pytest.approx(0.002)
    server.request(stop=True)
    client.commit_pull(np.zeros_like(center))  # and a center
    assert client.control.stop is True and client.control.learning_rate == pytest.approx(0.002)
    client.report({"loss": 0.5}, epoch=1)  # and a report's Ack
    assert client.control == server.control
    with pytest.raises(ValueError, match="positive finite"):
        server.request(learning_rate=-1.0)


def test_epoch_reports_are_kept_per_worker_and_epoch(make_server, connect):
    server = make_server([np.zeros(4, np.float32)], "downpour", num_workers=1)
    client = connect(server, 0)
    client.report({"loss": 0.9, "accuracy": 0.5}, epoch=1)
    client.report({"loss": 0.4})  # not an epoch's end
    client.report({"loss": 0.3, "accuracy": 0.8}, epoch=2)
    epochs = server.stats().workers[0].epochs
    assert epochs == {1: {"loss": 0.9, "accuracy": 0.5}, 2: {"loss": 0.3, "accuracy": 0.8}}


def test_the_center_as_each_epoch_ended_is_kept_for_the_driver(make_server, connect):
    server = make_server([np.zeros(4, np.float32)], "downpour", num_workers=2)
    server.keep_epoch_centers()
    first, second = connect(server, 0), connect(server, 1)
    first.pull(), second.pull()
    first.commit(np.ones(4, np.float32))
    first.report({"loss": 1.0}, epoch=1)
    second.commit(np.ones(4, np.float32))
    second.report({"loss": 1.0}, epoch=1)  # epoch 1 ends here: the center is 2
    first.commit(np.ones(4, np.float32))  # the center moves on to 3
    (epoch_one,) = server.take_epoch_center(1)
    np.testing.assert_array_equal(epoch_one, np.full(4, 2.0, np.float32))
    assert server.take_epoch_center(1) is None  # taken once
    assert server.take_epoch_center(2) is None  # not ended
    second.close()  # a finished worker does not hold epoch 2 up
    first.report({"loss": 0.5}, epoch=2)
    (epoch_two,) = server.take_epoch_center(2)
    np.testing.assert_array_equal(epoch_two, np.full(4, 3.0, np.float32))


def test_epoch_centers_are_kept_only_when_asked(make_server, connect):
    server = make_server([np.zeros(4, np.float32)], "downpour", num_workers=1)
    client = connect(server, 0)
    client.report({"loss": 1.0}, epoch=1)
    assert server.take_epoch_center(1) is None


def test_a_retry_that_reannounces_an_epoch_keeps_its_logs(make_server, connect):
    server = make_server([np.zeros(4, np.float32)], "downpour", num_workers=1)
    client = connect(server, 0)
    client.report({"loss": 0.7}, epoch=1)
    client.report({}, epoch=1)  # a retry cannot know whether epoch 1's report arrived
    client.report({}, epoch=2)  # here it had not: the epoch ends, without logs
    assert server.stats().workers[0].epochs == {1: {"loss": 0.7}, 2: {}}


@pytest.mark.parametrize("algorithm", ["downpour", "averaging"])
def test_a_workers_own_error_in_the_client_block_is_reported_not_a_goodbye(
    make_server, connect, algorithm
):
    from distkeras_async.errors import TrainingDivergedError

    server = make_server([np.zeros(4, np.float32)], algorithm, num_workers=2)
    with pytest.raises(TrainingDivergedError), connect(server, 0) as client:
        client.pull()
        raise TrainingDivergedError("the loss became nan at local step 3")
    wait_until(lambda: 0 in server.stats().workers and not server.stats().workers[0].connected)
    assert server.stats().workers[0].finished is False
    if algorithm == "averaging":  # a synchronous run fails at once, with the worker's reason
        wait_until(lambda: server.failure is not None)
        assert "the loss became nan at local step 3" in server.failure
