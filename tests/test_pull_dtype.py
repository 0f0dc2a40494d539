"""Compressed replies (``pull_dtype``): the center travels back as its change, with error
feedback on the server's side; the views on both ends, the bounds, the bytes, the protocol."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading

import numpy as np
import pytest
from conftest import serve_handshake

from distkeras_async import ParameterServerClient, RemoteProtocolError
from distkeras_async.algorithms.downpour import Downpour
from distkeras_async.layout import Layout
from distkeras_async.server.factory import make_server as make_any_server
from distkeras_async.wire.compression import commit_bytes
from distkeras_async.wire.deltas import CenterDelta, CenterView
from distkeras_async.wire.frames import Frame, encode_bytes
from distkeras_async.wire.schema import Op
from distkeras_async.worker.sharded_client import ShardedClient

COMPRESSED = ["float16", "bfloat16", "int8"]
# A model whose tensors span several of the codecs' blocks (65,536 values), with a tiny one.
SHAPES = [(300, 400), (7,), (70_000,), (3,)]
SIZES = [int(np.prod(shape)) for shape in SHAPES]
N = sum(SIZES)


def weights() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def random_updates(count: int, scale: float = 1e-2) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [(rng.normal(size=N) * scale).astype(np.float32) for _ in range(count)]


def tensors_of(flat: np.ndarray) -> list[np.ndarray]:
    return np.split(flat.astype(np.float64), np.cumsum(SIZES)[:-1])


def within_one_rounding(
    dtype: str, change: np.ndarray, error: np.ndarray, center: np.ndarray
) -> None:
    """``error`` is at most what one rounding of ``change`` in ``dtype`` may lose.

    Plus one rounding of the float32 sum ``view + change`` (a unit in the last place of the
    center), which is not the codec's but float32's.
    """
    ulp = np.spacing(np.abs(center)).astype(np.float64)
    pieces = zip(tensors_of(change), tensors_of(error), tensors_of(ulp), strict=True)
    for c, e, u in pieces:
        if dtype == "int8":  # half a step of the tensor's scale, max|c| / 127
            assert (np.abs(e) <= np.abs(c).max() / 254 * (1 + 1e-5) + u).all()
        elif dtype == "bfloat16":  # 8 significant bits, rounded to nearest
            assert (np.abs(e) <= np.abs(c) * 2.0**-8 * (1 + 1e-6) + u).all()
        else:  # float16: 11 significant bits, and half the spacing of its subnormals
            assert (np.abs(e) <= np.abs(c) * 2.0**-11 * (1 + 1e-6) + 2.0**-25 + u).all()


# --------------------------------------------------------------------------- the codecs


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_the_server_and_worker_views_stay_equal_bit_for_bit(dtype):
    sender = CenterDelta(dtype, SIZES, check_finite=False)
    receiver = CenterView(dtype, SIZES)
    center = np.concatenate([w.reshape(-1) for w in weights()])
    # The first reply of a connection is the whole center.
    assert sender.encode(center) is None
    receiver.whole(center)
    for step, update in enumerate(random_updates(12)):
        center = center + update
        if step == 5:
            center[SIZES[0] : SIZES[0] + SIZES[1]] = 0.0  # a tensor that becomes all zero
        change = sender.encode(center)
        assert change is not None
        received = receiver.add(change)
        assert sender.view is not None
        assert received.tobytes() == sender.view.tobytes()


@pytest.mark.parametrize(
    ("dtype", "message"),
    [("float32", "sends the whole center"), ("int4", "commit dtype must be one of")],
)
def test_a_change_travels_only_in_a_compressed_dtype(dtype, message):
    with pytest.raises(ValueError, match=message):
        CenterDelta(dtype, SIZES, check_finite=False)
    with pytest.raises(ValueError, match=message):
        CenterView(dtype, SIZES)


def test_a_center_that_is_not_finite_travels_whole_and_so_does_the_next():
    sender = CenterDelta("int8", SIZES, check_finite=True)
    center = np.ones(N, np.float32)
    assert sender.encode(center) is None
    assert sender.encode(center + 1) is not None
    center[5] = np.nan
    assert sender.encode(center) is None  # a NaN cannot travel as a change
    center[5] = 1.0
    assert sender.encode(center) is None  # nor be the view a change is added to
    assert sender.encode(center + 1) is not None


# --------------------------------------------------------------------------- through a server


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_the_workers_center_is_off_by_at_most_one_rounding_of_the_change(
    make_server, connect, dtype
):
    server = make_server(weights(), pull_dtype=dtype, num_workers=1)
    client = connect(server)
    assert client.pull_dtype == dtype
    held = client.pull()
    np.testing.assert_array_equal(held, server.center_flat)  # the first reply is whole
    for update in random_updates(8):
        received = client.commit_pull(update)
        center = server.center_flat
        within_one_rounding(dtype, center - held, center - received, center)
        assert not np.array_equal(received, center)  # it did travel rounded
        held = received.copy()


def test_connections_sharing_the_servers_scratch_each_get_their_own_change(make_server, connect):
    server = make_server(weights(), pull_dtype="int8", num_workers=2)
    clients = [connect(server, worker) for worker in range(2)]
    held = [client.pull() for client in clients]
    for step, update in enumerate(random_updates(6)):
        index = step % 2  # the other worker's view falls further behind each time
        received = clients[index].commit_pull(update)
        center = server.center_flat
        within_one_rounding("int8", center - held[index], center - received, center)
        held[index] = received.copy()


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_what_rounding_lost_arrives_with_the_next_reply(make_server, connect, dtype):
    server = make_server(weights(), pull_dtype=dtype, num_workers=1)
    client = connect(server)
    client.pull()
    for update in random_updates(3):
        client.commit(update)
    center = server.center_flat
    errors = []
    for _ in range(4):  # the center does not change: each pull sends the last one's loss
        errors.append(float(np.abs(client.pull().astype(np.float64) - center).max()))
    assert errors[0] > 0
    # Error feedback: no drift, the error shrinks by the dtype's resolution every reply,
    # down to float16's smallest step (it has no scale: a change below 2**-25 is zero).
    floor = 2.0**-25 if dtype == "float16" else 0.0
    for before, after in itertools.pairwise(errors):
        assert after <= max(before / 100, floor)
    assert errors[-1] <= floor + 1e-9


@pytest.mark.parametrize(("dtype", "ratio"), [("float16", 2), ("bfloat16", 2), ("int8", 4)])
def test_each_reply_after_the_first_carries_the_change_in_the_pull_dtype(
    make_server, connect, dtype, ratio
):
    server = make_server(weights(), pull_dtype=dtype, num_workers=1)
    client = connect(server)
    sent = []
    for update in [None, *random_updates(3)]:
        before = server.stats().bytes_out
        if update is None:
            client.pull()
        else:
            client.commit_pull(update)
        sent.append(server.stats().bytes_out - before)
    header = 512  # a reply's header and fields, generously
    assert 4 * N <= sent[0] < 4 * N + header  # the whole float32 center
    for size in sent[1:]:
        assert commit_bytes(dtype, SIZES) <= size < commit_bytes(dtype, SIZES) + header
        assert size < 4 * N / ratio * 1.01


def test_a_new_connection_starts_from_the_whole_center(make_server, connect):
    server = make_server(weights(), pull_dtype="int8", num_workers=1)
    first = connect(server)
    first.pull()
    for update in random_updates(3):
        first.commit_pull(update)
    first.close()
    second = connect(server, attempt=1)  # a retried task: a new connection, a new view
    before = server.stats().bytes_out
    assert second.pull().tobytes() == server.center_flat.tobytes()
    assert server.stats().bytes_out - before >= 4 * N


def test_a_float32_pull_dtype_sends_the_whole_center_every_time(make_server, connect):
    server = make_server(weights(), num_workers=1)
    client = connect(server)
    client.pull()
    for update in random_updates(3):
        assert client.commit_pull(update).tobytes() == server.center_flat.tobytes()


class _NonFiniteDownpour(Downpour):
    """DOWNPOUR that lets a NaN reach the center (as a user's rule may)."""

    name = "nonfinite-downpour"
    allow_nonfinite = True


def test_a_rule_that_allows_non_finite_centers_sends_them_whole(make_server, connect):
    server = make_server(weights(), _NonFiniteDownpour(pull_dtype="int8"), num_workers=1)
    client = connect(server)
    client.pull()
    update = np.zeros(N, np.float32)
    update[4] = np.nan
    received = client.commit_pull(update)
    assert np.isnan(received[4])
    # The rest arrived exactly: the reply was the whole center, not a change.
    assert received.tobytes() == server.center_flat.tobytes()


@pytest.mark.slow  # shard processes: fresh interpreters
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_each_shard_sends_the_change_of_its_slice(secret, dtype):
    server = make_any_server(
        weights(), "downpour", shards=2, num_workers=1, secret=secret, pull_dtype=dtype
    )
    server.start()
    try:
        layout = Layout.of(weights())
        with ShardedClient("127.0.0.1", server.ports, secret, 0, layout=layout) as client:
            assert client.pull_dtype == dtype
            held = client.pull()
            np.testing.assert_array_equal(held, server.center_flat)
            for update in random_updates(4):
                received = client.commit_pull(update)
                center = server.center_flat
                assert not np.array_equal(received, center)
                # Each shard rounds its own slice: at most one rounding of it, so within
                # the whole vector's bound for bfloat16 (elementwise).
                if dtype == "bfloat16":
                    within_one_rounding(dtype, center - held, center - received, center)
                else:
                    scale = float(np.abs(center - held).max())
                    ulp = np.spacing(np.abs(center))
                    assert (np.abs(center - received) <= scale / 254 * 1.00001 + ulp).all()
                held = received.copy()
    finally:
        server.stop()


# --------------------------------------------------------------------------- the worker's checks


def _scripted_server(listener: socket.socket, secret: bytes, replies: list[Frame]) -> None:
    """A server that completes a real handshake (an int8 pull dtype, a 3-parameter model),
    then answers each request with the next of ``replies``."""
    conn, _ = listener.accept()
    with conn:
        decoder = serve_handshake(conn, secret, {"pull_dtype": "int8"})
        for reply in replies:
            with contextlib.suppress(OSError):
                while decoder.next_frame() is None:
                    decoder.receive_data(conn.recv(4096))
                conn.sendall(encode_bytes(reply))
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass


def _center(change: bool, *tensors: np.ndarray) -> Frame:
    fields: dict[str, object] = {"version": 1, **({"change": True} if change else {})}
    return Frame(Op.CENTER, fields=fields, tensors=tensors)


WHOLE = np.arange(3, dtype=np.float32)
CHANGE = (np.ones(3, np.int8), np.ones(1, np.float32))


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        ([_center(True, *CHANGE)], "never sent"),  # a change of no center
        ([_center(True, WHOLE)], "change flag"),  # a whole center marked as a change
        ([_center(False, WHOLE), _center(False, *CHANGE)], "change flag"),  # and the reverse
    ],
    ids=["change-first", "whole-as-change", "change-as-whole"],
)
def test_a_worker_refuses_a_reply_it_cannot_add_to_its_view(secret, replies, message):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(
        target=_scripted_server, args=(listener, secret, replies), daemon=True
    )
    thread.start()
    try:
        client = ParameterServerClient("127.0.0.1", port, secret, 0, timeout=5)
        for _ in replies[:-1]:
            np.testing.assert_array_equal(client.pull(), WHOLE)
        with pytest.raises(RemoteProtocolError, match=message):
            client.pull()
        client.close()
    finally:
        thread.join(5)
        listener.close()
