"""The protocol's one state machine (wire/connection.py), as both ends use it."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from distkeras_async.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from distkeras_async.wire.connection import TABLE, Connection, Phase, Role
from distkeras_async.wire.frames import encode_bytes
from distkeras_async.wire.messages import (
    MESSAGE_TYPES,
    Ack,
    Bye,
    Center,
    Challenge,
    Commit,
    Error,
    Hello,
    Pull,
    RuleState,
    Welcome,
)
from distkeras_async.wire.schema import Op, TensorSpec
from distkeras_async.worker.client import ParameterServerClient

NONCE = bytes(range(32))
VECTOR = np.zeros(3, np.float32)


def welcome(state: bool = False) -> Welcome:
    layout = (TensorSpec("float32", (3,)),)
    return Welcome(NONCE, layout, "downpour", {}, 0, 1, False, 0, 0.0, 0, None, state)


def both() -> tuple[Connection, Connection]:
    return Connection(Role.CLIENT), Connection(Role.SERVER)


def travel(sender: Connection, receiver: Connection, message) -> None:
    sender.sent(message)
    receiver.received(message)
    assert sender.phase is receiver.phase


@pytest.mark.parametrize("state", [False, True])
def test_both_ends_walk_the_same_phases(state):
    client, server = both()
    assert client.phase is server.phase is Phase.CHALLENGE
    travel(server, client, Challenge(NONCE))
    assert client.phase is Phase.HELLO
    travel(client, server, Hello(NONCE, NONCE))
    assert server.phase is Phase.WELCOME
    travel(server, client, welcome(state))
    if state:
        assert client.phase is Phase.RESUME and not client.ready
        travel(server, client, RuleState((VECTOR,)))
    assert client.ready and server.ready
    for request, reply in ((Pull(), Center(VECTOR, 1)), (Commit(VECTOR), Ack(2))):
        travel(client, server, request)
        travel(server, client, reply)
    travel(client, server, RuleState((VECTOR,)))  # ahead of a commit, no reply
    travel(client, server, Bye())
    assert client.closed and server.closed


@pytest.mark.parametrize(
    ("steps", "message", "expected"),
    [
        ([], Center(VECTOR, 1), "expected challenge from the server in phase 'challenge'"),
        ([Challenge(NONCE)], Welcome, "expected hello from the client"),
        ([Challenge(NONCE), Hello(NONCE, NONCE)], Center(VECTOR, 1), "expected welcome"),
        (
            [Challenge(NONCE), Hello(NONCE, NONCE), welcome(state=True)],
            Center(VECTOR, 1),
            "expected state from the server in phase 'resume'",
        ),
    ],
)
def test_a_message_out_of_order_is_refused_naming_what_was_expected(steps, message, expected):
    client, server = both()
    for step in steps:
        sender, receiver = (client, server) if isinstance(step, Hello) else (server, client)
        travel(sender, receiver, step)
    if message is Welcome:  # the server cannot send one before the client's hello
        with pytest.raises(LocalProtocolError, match=expected):
            server.sent(welcome())
        return
    with pytest.raises(RemoteProtocolError, match=expected):
        client.received(message)
    with pytest.raises(LocalProtocolError, match="expected"):
        server.sent(message)


def test_requests_and_replies_go_one_way_only():
    client, server = both()
    for step, sender in ((Challenge(NONCE), server), (Hello(NONCE, NONCE), client)):
        travel(sender, server if sender is client else client, step)
    travel(server, client, welcome())
    with pytest.raises(RemoteProtocolError, match="got 'center'"):
        server.received(Center(VECTOR, 1))  # a client never sends a center
    with pytest.raises(LocalProtocolError, match="got 'pull'"):
        server.sent(Pull())
    with pytest.raises(RemoteProtocolError, match="got 'hello'"):
        server.received(Hello(NONCE, NONCE))  # no second handshake


def test_an_error_closes_either_end_in_any_phase_and_nothing_follows():
    for phase_steps in range(3):
        client, server = both()
        steps = [(server, client, Challenge(NONCE)), (client, server, Hello(NONCE, NONCE))]
        for sender, receiver, message in steps[:phase_steps]:
            travel(sender, receiver, message)
        travel(server, client, Error(ErrorCode.PROTOCOL, "no"))
        assert client.closed and server.closed
        with pytest.raises(RemoteProtocolError, match="nothing more"):
            server.received(Pull())


def test_tensors_are_allowed_only_where_the_table_has_a_tensor_message():
    client, server = both()
    assert not server.may_carry_tensors(Op.COMMIT)  # before the handshake
    travel(server, client, Challenge(NONCE))
    travel(client, server, Hello(NONCE, NONCE))
    travel(server, client, welcome(state=True))
    assert client.may_carry_tensors(Op.STATE) and not client.may_carry_tensors(Op.CENTER)
    travel(server, client, RuleState((VECTOR,)))
    assert client.may_carry_tensors(Op.CENTER) and not client.may_carry_tensors(Op.STATE)
    assert server.may_carry_tensors(Op.COMMIT) and server.may_carry_tensors(Op.STATE)
    assert not server.may_carry_tensors(Op.CENTER) and not server.may_carry_tensors(Op.REPORT)


def test_the_table_names_every_op_and_only_real_messages():
    named = {kind for phase in TABLE.values() for _, kind in phase}
    assert {kind.op for kind in named} | {Op.ERROR} == set(Op)
    assert named <= set(MESSAGE_TYPES.values())


def test_the_real_client_refuses_a_server_that_skips_the_welcome(secret):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(encode_bytes(Challenge(NONCE).to_frame()))
            conn.recv(4096)  # the hello
            conn.sendall(encode_bytes(Ack(1).to_frame()))
            conn.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(RemoteProtocolError, match="expected welcome from the server"):
            ParameterServerClient("127.0.0.1", port, secret, 0, timeout=10)
    finally:
        listener.close()
        thread.join(10)
