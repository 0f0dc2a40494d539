"""Every built-in rule, number for number, through the real server (sockets, sessions, the
queue, the in-place and spare-buffer paths), against values computed by hand."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from distkeras_async import registry


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


CENTER = f32(1, 2, 3, 4)
U1 = f32(0.5, -1, 2, 0.25)
U2 = f32(-0.25, 0.5, 1, 3)
U3 = f32(1, 1, -1, -1)

# center + u1 + u2 + u3, worked out by hand.
SUM = f32(2.25, 2.5, 5, 6.25)

# Each case: algorithm, how the commits are sent, the expected center after them.
ASYNC_CASES = {
    # Asynchronous rules; one client commits u1, u2, u3 without pulling in between, so their
    # staleness is 0, 1 and 2 (the version when it pulled stays 0).
    "downpour": SUM,  # the center adds every change
    "adag": SUM,  # the worker normalises by the window before committing; the server adds
    "aeasgd": SUM,  # the center adds the elastic difference e the worker sent
    "eamsgd": SUM,  # the same server rule as aeasgd
    # DynSGD: u1 + u2 / 2 + u3 / 3
    "dynsgd": f32(
        1 + 0.5 - 0.125 + 1 / 3,
        2 - 1 + 0.25 + 1 / 3,
        3 + 2 + 0.5 - 1 / 3,
        4 + 0.25 + 1.5 - 1 / 3,
    ),
}

ROUND_CASES = {
    # Synchronous rules; three workers commit u1, u2, u3 in one round.
    "easgd": SUM,  # center + sum of the elastic differences
    "averaging": f32((0.5 - 0.25 + 1) / 3, (-1 + 0.5 + 1) / 3, (2 + 1 - 1) / 3, (0.25 + 3 - 1) / 3),
}


def test_every_builtin_has_a_case():
    assert set(ASYNC_CASES) | set(ROUND_CASES) == {
        "downpour",
        "adag",
        "aeasgd",
        "eamsgd",
        "dynsgd",
        "easgd",
        "averaging",
    }


@pytest.mark.parametrize("name", sorted(ASYNC_CASES))
def test_asynchronous_rule_through_the_server(name, make_server, connect):
    server = make_server(weights=[CENTER.copy()], algorithm=name, num_workers=1)
    client = connect(server)
    for update in (U1, U2, U3):
        client.commit(update)
    np.testing.assert_allclose(server.center_flat, ASYNC_CASES[name], rtol=0, atol=1e-6)
    stats = server.stats()
    assert stats.version == 3 and stats.workers[0].staleness_total == 0 + 1 + 2


@pytest.mark.parametrize("name", sorted(ROUND_CASES))
def test_synchronous_rule_through_the_server(name, make_server, connect):
    hyperparameters = {"rho": 1.0, "learning_rate": 0.1} if name == "easgd" else {}
    server = make_server(weights=[CENTER.copy()], algorithm=name, num_workers=3, **hyperparameters)
    clients = [connect(server, w) for w in range(3)]
    replies: dict[int, np.ndarray] = {}

    def commit(worker: int, update: np.ndarray) -> None:
        replies[worker] = clients[worker].commit_pull(update)

    threads = [threading.Thread(target=commit, args=(w, u)) for w, u in enumerate((U1, U2, U3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    np.testing.assert_allclose(server.center_flat, ROUND_CASES[name], rtol=0, atol=1e-6)
    # Every worker of the round received that same new center.
    for worker in range(3):
        np.testing.assert_array_equal(replies[worker], server.center_flat)
    assert server.stats().rounds == 1 and server.version == 1


def test_registry_names_match_the_cases():
    assert set(registry.available()) >= set(ASYNC_CASES) | set(ROUND_CASES)
