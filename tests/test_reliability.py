"""Hostile input, faults and load against a live server on 127.0.0.1 (see docs/reliability.md).

Sizes scale with environment variables so CI runs a reduced size and a full-size run is one
command away:

    DISTKERAS_FUZZ_FRAMES=100000 DISTKERAS_LOAD_COMMITS=500 python -m pytest -m stress
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading

import numpy as np
import pytest
from conftest import handshake, make_tls_contexts, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distkeras_async import ParameterServer, ParameterServerClient
from distkeras_async.errors import ProtocolError
from distkeras_async.server.session import MAX_QUEUED_REQUESTS
from distkeras_async.wire import auth
from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import Frame, encode_bytes
from distkeras_async.wire.schema import Op

pytestmark = pytest.mark.stress

FUZZ_FRAMES = int(os.environ.get("DISTKERAS_FUZZ_FRAMES", "10000"))
LOAD_COMMITS = int(os.environ.get("DISTKERAS_LOAD_COMMITS", "60"))
N = 64  # parameters of the fuzzed model


# --------------------------------------------------------------------------- fuzzing


class FuzzPeer:
    """Sends one frame on a fresh connection (optionally after a real handshake) and reports
    how the server answered: the reply message, "closed", or raises on a hang."""

    def __init__(self, port: int, secret: bytes) -> None:
        self.port, self.secret = port, secret
        self.connections = 0

    def send(
        self, data: bytes, authenticate: bool, worker: int = 0, attempt: int = 0
    ) -> Frame | str:
        self.connections += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            decoder = FrameDecoder()

            def receive() -> Frame | str:
                while (message := decoder.next_frame()) is None:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        return "closed"
                    if not chunk:
                        return "closed"
                    decoder.receive_data(chunk)
                return message

            challenge = receive()
            assert isinstance(challenge, Frame) and challenge.op is Op.CHALLENGE
            if authenticate:
                proof = auth.client_proof(self.secret, challenge.fields["nonce"], worker, attempt)
                hello = Frame(
                    Op.HELLO, worker, attempt, 0, {"proof": proof, "nonce": auth.new_nonce()}
                )
                sock.sendall(encode_bytes(hello))
                welcome = receive()
                assert isinstance(welcome, Frame) and welcome.op is Op.WELCOME
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)  # no more bytes: the server must decide now
            except OSError:  # the server closed first (reset, broken pipe, not connected)
                return "closed"
            try:
                return receive()
            except ProtocolError:
                return "garbage"  # never expected: the server only sends valid frames
            except TimeoutError:
                return "hang"  # never expected: every frame gets an answer or a close


def valid_commit(worker: int, attempt: int, rng: np.random.Generator) -> bytes:
    update = rng.integers(-8, 8, N).astype(np.float32)  # exact in float32: sums are exact
    return encode_bytes(Frame(Op.COMMIT, worker, attempt, 1, tensors=(update,)))


def mutate(frame: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(frame)
    kind = rng.integers(6)
    if kind == 0:  # flip bits anywhere
        for _ in range(rng.integers(1, 8)):
            i = rng.integers(len(data))
            data[i] ^= 1 << rng.integers(8)
    elif kind == 1:  # overwrite in the length prefix and header
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(min(len(data), 80))] = rng.integers(256)
    elif kind == 2:  # truncate
        data = data[: rng.integers(len(data))]
    elif kind == 3:  # insert bytes
        i = rng.integers(len(data) + 1)
        data[i:i] = rng.integers(0, 256, rng.integers(1, 16)).astype(np.uint8).tobytes()
    elif kind == 4:  # delete bytes
        i = rng.integers(len(data))
        del data[i : i + rng.integers(1, 16)]
    else:  # random garbage of a random length
        data = bytearray(rng.integers(0, 256, rng.integers(0, 300)).astype(np.uint8).tobytes())
    return bytes(data)


@pytest.fixture
def fuzz_server(secret):
    server = ParameterServer(
        [np.zeros(N, np.float32)], "downpour", num_workers=4, secret=secret, max_connections=64
    )
    server.start()
    yield server
    server.stop()


def test_fuzzing_a_live_server_changes_nothing_but_valid_commits(fuzz_server, secret):
    """Random and mutated frames, before and after the handshake: the server never crashes or
    hangs, answers every bad frame with an error or a close, and its center is bit for bit
    the sum of the commits it accepted, each of which was a valid commit."""
    rng = np.random.default_rng(20261126)
    peer = FuzzPeer(fuzz_server.port, secret)
    expected = np.zeros(N, np.float32)
    accepted = rejected = 0
    for i in range(FUZZ_FRAMES):
        # Each connection is a new attempt of its worker, so no two frames share a commit
        # identity: a mutated frame can never make a later valid one look like a resend.
        worker, attempt = int(rng.integers(4)), i
        frame = valid_commit(worker, attempt, rng)
        authenticate = bool(i % 3)  # a third of the frames arrive before any handshake
        data = frame if rng.random() < 0.1 else mutate(frame, rng)
        version = fuzz_server.version
        reply = peer.send(data, authenticate, worker, attempt)
        assert reply not in ("garbage", "hang"), (reply, authenticate, data)
        # The server's version tells whether it applied the frame (a reply can be lost when
        # the server resets a connection that sent garbage after a valid commit).
        if fuzz_server.version == version + 1:
            # Applied: it must decode locally as a valid commit of the model's layout. Bytes
            # after the first frame may be garbage: the server closed the connection there.
            decoder = FrameDecoder(max_payload_bytes=N * 4)
            with contextlib.suppress(ProtocolError):
                decoder.receive_data(data)
            message = decoder.next_frame()
            assert message is not None and message.op is Op.COMMIT and authenticate
            (tensor,) = message.tensors
            assert tensor.dtype == np.float32 and tensor.shape == (N,)
            assert np.isfinite(tensor).all()
            # Mutated exponents make huge, finite updates; the server refuses any whose sum
            # would overflow, so the sum of the accepted ones never does (this would raise).
            with np.errstate(over="raise", invalid="raise"):
                expected = expected + tensor
            accepted += 1
        else:
            assert fuzz_server.version == version
            assert reply == "closed" or reply.op in (Op.ERROR, Op.ACK), reply
            rejected += 1
    assert accepted > FUZZ_FRAMES // 20 and rejected > FUZZ_FRAMES // 2
    np.testing.assert_array_equal(fuzz_server.center_flat, expected)
    assert fuzz_server.version == accepted
    # Still serving, and nothing leaked: no connection left open, no buffer held.
    with ParameterServerClient(
        "127.0.0.1", fuzz_server.port, secret, 3, attempt=FUZZ_FRAMES
    ) as client:
        np.testing.assert_array_equal(client.pull(), expected)
    wait_until(lambda: fuzz_server.stats().connections == 0)
    stats = fuzz_server.stats()
    assert (stats.receive_buffers_in_use, stats.center_buffers_in_use) == (0, 1)
    print(f"fuzz: {FUZZ_FRAMES} frames, {accepted} accepted, {rejected} rejected")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=512), authenticate=st.booleans())
def test_hypothesis_frames_never_change_the_center(fuzz_server, secret, data, authenticate):
    before = fuzz_server.center_flat
    reply = FuzzPeer(fuzz_server.port, secret).send(data, authenticate)
    assert reply == "closed" or reply.op in (Op.ERROR, Op.ACK)
    if reply == "closed" or reply.op is Op.ERROR:
        np.testing.assert_array_equal(fuzz_server.center_flat, before)


# --------------------------------------------------------------------------- authentication


def test_another_runs_secret_cannot_pull_commit_or_learn_the_layout(make_server, raw_peer, secret):
    server = make_server()
    peer = raw_peer(server.port)
    challenge = peer.receive()
    other = auth.new_secret()
    proof = auth.client_proof(other, challenge.fields["nonce"], 0, 0)
    peer.send(Frame(Op.HELLO, 0, 0, 0, {"proof": proof, "nonce": auth.new_nonce()}))
    reply = peer.receive()
    assert reply.op is Op.ERROR and "layout" not in reply.fields["message"]
    assert peer.closed_by_server()
    for op in (Op.PULL, Op.REPORT):
        peer2 = raw_peer(server.port)
        peer2.receive()
        fields = {"metrics": {"loss": 1.0}} if op is Op.REPORT else {}
        peer2.send(Frame(op, fields=fields))
        assert peer2.receive().op is Op.ERROR
    assert server.version == 0


@pytest.mark.parametrize("use_uvloop", [True, False])
def test_tls_end_to_end_and_plaintext_refused(tmp_path, secret, use_uvloop):
    server_ctx, client_ctx, _ = make_tls_contexts(tmp_path)
    server = ParameterServer(
        [np.zeros(1000, np.float32)],
        "downpour",
        num_workers=2,
        secret=secret,
        ssl_context=server_ctx,
        use_uvloop=use_uvloop,
        handshake_timeout=2,
    )
    port = server.start()
    try:
        with ParameterServerClient(
            "127.0.0.1", port, secret, 0, ssl_context=client_ctx, timeout=10
        ) as client:
            client.commit(np.ones(1000, np.float32))
            np.testing.assert_array_equal(client.commit_pull(np.ones(1000, np.float32)), 2.0)
        # A plaintext client cannot even read the challenge.
        with pytest.raises((OSError, ProtocolError)):
            ParameterServerClient("127.0.0.1", port, secret, 1, timeout=3, connect_timeout=3)
        # A client that does not trust the certificate refuses the server.
        with pytest.raises(ssl.SSLError):
            ParameterServerClient(
                "127.0.0.1", port, secret, 1, ssl_context=ssl.create_default_context(), timeout=5
            )
        assert server.version == 2
    finally:
        server.stop()


@pytest.mark.parametrize("use_uvloop", [True, False])
def test_concurrent_tls_workers_share_one_receive_buffer(tmp_path, secret, use_uvloop):
    # Two TLS workers of an asynchronous rule contend for its single receive buffer. TLS
    # transports once stalled here: with a write high-water mark of 0 they reported "paused"
    # after every read, and a connection waiting for the buffer was never read again.
    server_ctx, client_ctx, _ = make_tls_contexts(tmp_path)
    n, rounds = 200_000, 100
    server = ParameterServer(
        [np.zeros(n, np.float32)],
        "downpour",
        num_workers=2,
        secret=secret,
        ssl_context=server_ctx,
        use_uvloop=use_uvloop,
        send_timeout=10,
    )
    port = server.start()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with ParameterServerClient(
                "127.0.0.1", port, secret, worker, ssl_context=client_ctx, timeout=20
            ) as client:
                for _ in range(rounds):
                    client.commit_pull(np.ones(n, np.float32))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert server.version == 2 * rounds
        np.testing.assert_array_equal(server.center[0], float(2 * rounds))
    finally:
        server.stop()


# --------------------------------------------------------------------------- resource limits


def test_a_peer_that_stops_reading_blocks_nobody(make_server, raw_peer, connect, secret):
    """A peer that never reads its 16 MB replies does not hold up another worker: its
    commits complete while the stuck peer is still connected (its send_timeout is far away).
    Dropping such a peer is test_containment.py's
    test_a_reader_that_never_reads_its_center_returns_the_buffer_when_dropped."""
    n = 4_000_000  # 16 MB replies: far more than socket buffers hold
    server = make_server(weights=[np.zeros(n, np.float32)], send_timeout=600.0)
    stuck = raw_peer(server.port, timeout=30)
    handshake(stuck, secret, worker=0)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for seq in range(1, 6):  # pipelined pulls it never reads
        stuck.send(Frame(Op.PULL, 0, 0, seq))
    worker = connect(server, worker=1, timeout=60)
    for _ in range(3):
        worker.commit(np.ones(n, np.float32))
    np.testing.assert_array_equal(worker.pull()[:3], 3.0)
    assert server.stats().connections == 2  # the stuck peer is still there, still stuck
    # Its unread reply keeps one old center buffer; the commits used the others.
    assert server.stats().center_buffers <= 3


# --------------------------------------------------------------------------- faults


def test_connection_closed_mid_commit_changes_nothing_and_the_retry_applies_once(
    make_server, raw_peer, connect, secret
):
    server = make_server()
    peer = raw_peer(server.port)
    handshake(peer, secret, worker=0)
    frame = encode_bytes(Frame(Op.COMMIT, 0, 0, 1, tensors=(np.ones(10, np.float32),)))
    peer.send_raw(frame[: len(frame) - 20])  # half of the payload, then the task dies
    peer.close()
    wait_until(lambda: server.stats().connections == 0)
    assert server.version == 0
    np.testing.assert_array_equal(server.center_flat, np.zeros(10))
    retry = connect(server, worker=0, attempt=1)  # Spark's retry of the same task
    retry.commit(np.ones(10, np.float32))
    np.testing.assert_array_equal(server.center_flat, np.ones(10))
    assert server.stats().commits == 1


# --------------------------------------------------------------------------- load


@pytest.mark.parametrize("algorithm", ["downpour", "averaging"])
def test_many_clients_lose_and_duplicate_nothing(make_server, secret, algorithm):
    clients, commits = 64, LOAD_COMMITS
    server = make_server(
        weights=[np.zeros(256, np.float32)],
        algorithm=algorithm,
        num_workers=clients,
        max_connections=clients + 8,
    )
    errors: list[BaseException] = []
    start = threading.Barrier(clients)

    def work(worker: int) -> None:
        try:
            with ParameterServerClient("127.0.0.1", server.port, secret, worker, timeout=60) as c:
                start.wait(60)
                delta = np.full(256, float(worker + 1), np.float32)
                for k in range(commits):
                    if k % 3 == 0:
                        c.commit_pull(delta)
                    else:
                        c.commit(delta)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    stats = server.stats()
    assert stats.commits == clients * commits
    assert sum(w.duplicates for w in stats.workers.values()) == 0
    if algorithm == "downpour":
        total = commits * sum(range(1, clients + 1))
        np.testing.assert_array_equal(server.center_flat, np.full(256, total, np.float32))
        assert stats.version == clients * commits
        assert stats.receive_buffers == 1  # asynchronous: one receive buffer, shared
    else:
        # Every round is the mean of the 64 workers' constant deltas.
        mean = sum(range(1, clients + 1)) / clients
        np.testing.assert_array_equal(server.center_flat, np.full(256, mean, np.float32))
        assert stats.version == stats.rounds == commits
        assert stats.receive_buffers == clients  # synchronous: one per worker, no more
    assert stats.center_buffers <= 3
    wait_until(lambda: server.stats().receive_buffers_in_use == 0)


def _flood(server, raw_peer, secret, requests: int):
    """A peer pipelines ``requests`` pulls of a 16 MB center and reads nothing: the first
    reply blocks its writes, the others queue."""
    peer = raw_peer(server.port, timeout=30)
    handshake(peer, secret)
    before = server.stats().bytes_in
    data = b"".join(encode_bytes(Frame(Op.PULL, 0, 0, s)) for s in range(1, requests + 1))
    peer.send_raw(data)
    return peer, before + len(data)


def test_64_queued_requests_are_accepted(make_server, raw_peer, secret):
    server = make_server(weights=[np.zeros(4_000_000, np.float32)], send_timeout=600)
    # The first pull is answered (and blocks); the next 64 wait in the queue: the limit.
    peer, total = _flood(server, raw_peer, secret, 1 + MAX_QUEUED_REQUESTS)
    wait_until(lambda: server.stats().bytes_in == total)  # all read, none refused
    stats = server.stats()
    assert (stats.connections, stats.rejected) == (1, 0)
    peer.close()


def test_the_65th_queued_request_is_cut_off(make_server, raw_peer, secret):
    """Requests that queue up behind an unread reply are bounded, not buffered forever."""
    server = make_server(weights=[np.zeros(4_000_000, np.float32)], send_timeout=600)
    peer, _ = _flood(server, raw_peer, secret, 2 + MAX_QUEUED_REQUESTS)
    # The server closes with requests still unread, so the kernel may reset the connection
    # and drop the error frame before the peer reads it: check the server's side.
    wait_until(lambda: server.stats().connections == 0)
    assert server.stats().rejected == 1
    replies = []
    while (reply := peer.receive()) is not None:
        replies.append(reply)
    assert len(replies) <= 1 + MAX_QUEUED_REQUESTS
    if replies and replies[-1].op is Op.ERROR:
        assert replies[-1].fields["code"] == "limit"
        assert (
            "more than 64 requests sent without reading the replies"
            in (replies[-1].fields["message"])
        )
