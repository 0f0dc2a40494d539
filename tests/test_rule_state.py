"""A worker rule's state travels with its commits and back to a retried attempt; the server
rule's state is saved in checkpoints (docs/reliability.md, docs/custom-optimizer.md)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import handshake

from distkeras_async import delta_rule
from distkeras_async.errors import ServerError
from distkeras_async.wire.frames import Frame
from distkeras_async.wire.schema import Op
from distkeras_async.worker.overlap import OverlappedClient
from distkeras_async.worker.training import carry_rule_state

Stateless = delta_rule("test-stateless", "DOWNPOUR, no worker state.", worker=lambda rule: [])


def momentum_rule():
    from distkeras_async.transforms import momentum

    return delta_rule("test-momentum", "DOWNPOUR with a worker momentum.", worker=momentum(0.5))


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


WEIGHTS = [np.zeros(3, np.float32)]


def test_the_state_of_the_last_accepted_commit_comes_back_to_the_next_attempt(make_server, connect):
    server = make_server(weights=WEIGHTS, algorithm=momentum_rule(), num_workers=1)
    first = connect(server, 0, attempt=0)
    assert first.restored_state is None and first.carries_state
    velocity = f32(0, 0, 0)
    first.state_source = lambda: ((velocity,),)
    for value in (1.0, 2.0):
        velocity[:] = value
        first.commit(f32(1, 1, 1))
    first.close()
    retry = connect(server, 0, attempt=1)
    assert retry.welcome.state
    (restored,) = retry.restored_state
    np.testing.assert_array_equal(restored, [2, 2, 2])
    np.testing.assert_array_equal(server.center_flat, [2, 2, 2])  # both commits applied


def test_a_resent_commit_does_not_replace_the_kept_state(make_server, raw_peer, secret, connect):
    server = make_server(weights=WEIGHTS, algorithm=momentum_rule(), num_workers=1)
    peer = raw_peer(server.port)
    handshake(peer, secret)
    for seq, value in ((1, 1.0), (3, 7.0)):  # the second commit reuses seq 2: a resend
        peer.send(Frame(Op.STATE, 0, 0, seq, {}, (np.full(3, value, np.float32),)))
        commit_seq = 2 if seq == 3 else seq + 1
        peer.send(Frame(Op.COMMIT, 0, 0, commit_seq, {}, (f32(1, 1, 1),)))
        reply = peer.receive()
        assert reply is not None and reply.op is Op.ACK
    assert reply.fields.get("duplicate") is True
    peer.close()
    (restored,) = connect(server, 0, attempt=1).restored_state
    np.testing.assert_array_equal(restored, [1, 1, 1])  # the accepted commit's, not 7


@pytest.mark.parametrize(
    ("algorithm", "tensors", "message"),
    [
        ("downpour", (f32(1, 1, 1),), "keeps no worker state"),
        (None, (f32(1, 1),), "worker state of algorithm 'test-momentum' is"),
        (None, (np.zeros(3, np.float16),), "worker state of algorithm 'test-momentum' is"),
    ],
)
def test_a_state_that_is_not_the_rules_is_refused(
    algorithm, tensors, message, make_server, raw_peer, secret
):
    server = make_server(weights=WEIGHTS, algorithm=algorithm or momentum_rule(), num_workers=1)
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send(Frame(Op.STATE, 0, 0, 1, {}, tensors))
    error = peer.receive()
    assert error is not None and error.op is Op.ERROR
    assert message in error.fields["message"]
    assert peer.closed_by_server()
    np.testing.assert_array_equal(server.center_flat, [0, 0, 0])


def test_a_state_before_the_handshake_is_refused(make_server, raw_peer):
    server = make_server(weights=WEIGHTS, algorithm=momentum_rule(), num_workers=1)
    peer = raw_peer(server.port)
    assert peer.receive().op is Op.CHALLENGE
    peer.send(Frame(Op.STATE, 0, 0, 0, {}, (f32(1, 1, 1),)))
    error = peer.receive()
    assert error is not None and "before the handshake" in error.fields["message"]


def test_an_overlapped_worker_sends_the_state_as_it_was_at_its_commit(make_server, connect):
    server = make_server(weights=WEIGHTS, algorithm=momentum_rule(), num_workers=1)
    velocity = f32(3, 3, 3)
    with OverlappedClient(connect(server, 0)) as overlapped:
        overlapped.state_source = lambda: ((velocity,),)
        overlapped.commit_pull(f32(1, 1, 1))
        velocity[:] = 9  # the rule moves on while the commit travels
        overlapped.wait()
    (restored,) = connect(server, 0, attempt=1).restored_state
    np.testing.assert_array_equal(restored, [3, 3, 3])


def test_carry_rule_state_restores_the_rule_and_wires_the_source(make_server, connect):
    rule = momentum_rule()
    server = make_server(weights=WEIGHTS, algorithm=rule, num_workers=1)
    first = connect(server, 0, attempt=0)
    worker = rule()
    carry_rule_state(worker, first)
    assert first.state_source is not None
    weights = worker.worker_start(np.zeros(3, np.float32), first)
    worker.worker_exchange(weights + f32(2, 0, 0), first)  # velocity (2, 0, 0)
    first.close()
    retry = connect(server, 0, attempt=1)
    resumed = rule()
    carry_rule_state(resumed, retry)
    resumed.worker_start(np.zeros(3, np.float32), retry)
    ((velocity,),) = resumed.worker_state()
    np.testing.assert_array_equal(velocity, [2, 0, 0])
    # A rule without worker state sends none.
    plain = connect(server, 0, attempt=2)
    carry_rule_state(Stateless(), plain)
    assert plain.state_source is None


def test_a_synchronous_welcome_never_offers_a_state(make_server, connect):
    server = make_server(weights=WEIGHTS, algorithm="averaging", num_workers=1)
    client = connect(server, 0)
    assert not client.welcome.state and client.restored_state is None
    with pytest.raises(ServerError, match="keeps no worker state"):
        client.state_source = lambda: (f32(1, 1, 1),)
        client.commit_pull(f32(1, 1, 1))


# --------------------------------------------------------------------------- server state


def server_momentum():
    from distkeras_async.transforms import momentum

    return delta_rule(
        "test-server-momentum", "DOWNPOUR whose server adds a momentum.", server=momentum(0.5)
    )


UPDATES = (f32(1, 0, 2), f32(0, 4, 1), f32(3, 1, 0))


def commit_all(server, connect, updates, worker: int = 0, attempt: int = 0) -> None:
    client = connect(server, worker, attempt=attempt)
    for update in updates:
        client.commit(update)
    client.close()


def test_a_resumed_server_continues_the_rules_state_bit_for_bit(make_server, connect, tmp_path):
    rule = server_momentum()
    whole = make_server(weights=WEIGHTS, algorithm=rule, num_workers=1)
    commit_all(whole, connect, UPDATES)
    path = tmp_path / "momentum.npz"
    first = make_server(weights=WEIGHTS, algorithm=rule, num_workers=1)
    commit_all(first, connect, UPDATES[:2])
    first.checkpoint(path)
    first.stop()
    from distkeras_async.server.checkpoint import load_checkpoint

    ((velocity,),) = (load_checkpoint(path).rule_state,)
    np.testing.assert_array_equal(velocity, 0.5 * UPDATES[0] + UPDATES[1])
    resumed = make_server(weights=WEIGHTS, algorithm=rule, num_workers=1, resume_from=path)
    commit_all(resumed, connect, UPDATES[2:])
    assert resumed.center_flat.tobytes() == whole.center_flat.tobytes()
    # Resuming without the state (as before rules kept one) ends elsewhere.
    plain = make_server(weights=[first.center_flat], algorithm=rule, num_workers=1)
    commit_all(plain, connect, UPDATES[2:])
    assert plain.center_flat.tobytes() != whole.center_flat.tobytes()


def test_a_checkpoint_with_another_rules_state_is_refused(secret, tmp_path):
    from distkeras_async.errors import CheckpointError
    from distkeras_async.layout import Layout
    from distkeras_async.server.checkpoint import Checkpoint, save_checkpoint
    from distkeras_async.server.parameter_server import ParameterServer

    rule = server_momentum()
    path = tmp_path / "wrong.npz"
    settings = rule().settings
    layout = Layout.of(WEIGHTS)
    save_checkpoint(path, Checkpoint(f32(0, 0, 0), 4, layout, rule.name, settings, (f32(1, 2),)))
    with pytest.raises(CheckpointError, match="not algorithm 'test-server-momentum'"):
        ParameterServer(WEIGHTS, rule, num_workers=1, secret=secret, resume_from=path)


def test_a_refused_center_leaves_the_server_state_as_it_was(make_server, connect):
    rule = server_momentum()
    server = make_server(weights=WEIGHTS, algorithm=rule, num_workers=1)
    client = connect(server)
    client.commit(f32(1e38, 0, 0))
    with pytest.raises(ServerError, match="not be finite"):
        client.commit(f32(3e38, 0, 0))  # velocity 0.5e38 + 3e38 overflows float32
    survivor = connect(server, 0, attempt=1)
    survivor.commit(f32(0, 1, 0))
    # The refused commit left no trace in the velocity: 0.5 * (1e38, 0, 0) + (0, 1, 0).
    expected = f32(1e38, 0, 0) + (np.float32(0.5) * f32(1e38, 0, 0) + f32(0, 1, 0))
    np.testing.assert_array_equal(server.center_flat, expected)


def test_a_sharded_server_refuses_to_checkpoint_a_rules_server_state(secret, tmp_path):
    from distkeras_async.errors import CheckpointError
    from distkeras_async.server.sharded import ShardedParameterServer

    with pytest.raises(CheckpointError, match="keeps server state"):
        ShardedParameterServer(
            [np.zeros(8, np.float32)],
            server_momentum(),
            shards=2,
            num_workers=1,
            secret=secret,
            checkpoint_path=tmp_path / "c.npz",
            checkpoint_interval=60,
        )
