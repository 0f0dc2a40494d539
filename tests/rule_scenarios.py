"""Deterministic scenarios that run every built-in rule, worker side and server side, through
the real server; their float32 results were recorded (``tests/fixtures/rules_v2.npz``) with
the contract of version 2, before the rules were rewritten on the contract of version 3, and
``tests/test_rules_bit_identical.py`` checks that the new rules give the same bits.

Run ``python tests/rule_scenarios.py`` to record the fixtures again (only when a rule's
numbers are meant to change).
"""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.exchange import run_worker

FIXTURES = Path(__file__).parent / "fixtures" / "rules_v2.npz"
SIZE = 257

# name -> (algorithm, hyperparameters); the built-ins with their defaults and with others.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "downpour": ("downpour", {}),
    "downpour-w3": ("downpour", {"communication_window": 3}),
    "downpour-int8": ("downpour", {"commit_dtype": "int8"}),
    "adag": ("adag", {}),
    "adag-w2": ("adag", {"communication_window": 2}),
    "dynsgd": ("dynsgd", {}),
    "aeasgd": ("aeasgd", {}),
    "aeasgd-rho": ("aeasgd", {"rho": 2.0, "learning_rate": 0.1}),
    "eamsgd": ("eamsgd", {}),
    "eamsgd-m9": ("eamsgd", {"momentum": 0.9, "communication_window": 4}),
    "easgd": ("easgd", {"rho": 1.0, "learning_rate": 0.1}),
    "averaging": ("averaging", {}),
    "averaging-w7": ("averaging", {"communication_window": 7}),
}


def _sign_downpour() -> Any:
    """DOWNPOUR committing half the sign of the change, damped by staleness on the server."""
    from distkeras_async import delta_rule
    from distkeras_async.transforms import scale, sign, staleness_divide

    return delta_rule(
        "scenario-sign-downpour",
        "Half the sign of the change; stale commits damped.",
        worker=[sign(), scale(0.5)],
        server=staleness_divide(),
    )


def _clipped_downpour() -> Any:
    """The example plugin's rule (``examples/plugin``). Its recording was made with version
    2's built-in ``ClipNorm`` transform on the server (norm in float64), which the plugin now
    uses; the version 2 plugin computed its own norm in float32."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "plugin"))
    from distkeras_clipped import ClippedDownpour

    return ClippedDownpour


# name -> (a function returning the rule's class, hyperparameters): rules written from parts.
COMPOSED: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "sign-downpour": (_sign_downpour, {}),
    "clipped-downpour": (_clipped_downpour, {"max_norm": 1.5}),
}


def _vectors(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SIZE).astype(np.float32) for _ in range(count)]


class QuadraticModel:
    """A numpy "model": each step moves the weights towards a target by a tenth."""

    def __init__(self, start: np.ndarray, target: np.ndarray) -> None:
        self.weights = start.copy()
        self.target = target

    def get_flat(self) -> np.ndarray:
        return self.weights.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        self.weights = np.array(flat, np.float32)

    def train_step(self, batch: Any) -> Mapping[str, float]:
        step = np.float32(0.1) * (self.weights - self.target) + np.float32(batch)
        self.weights = (self.weights - step).astype(np.float32)
        return {"loss": float(np.dot(step, step))}


def _server(algorithm: Any, workers: int, secret: bytes, **hyper: Any) -> ParameterServer:
    center = _vectors(1, 1)[0]
    server = ParameterServer(
        [center], algorithm, num_workers=workers, secret=secret, port=0, **hyper
    )
    server.start()
    return server


def _client(server: ParameterServer, secret: bytes, worker: int) -> ParameterServerClient:
    assert server.port is not None
    return ParameterServerClient("127.0.0.1", server.port, secret, worker, timeout=20.0)


def server_rule(algorithm: Any, hyper: Mapping[str, Any]) -> np.ndarray:
    """Raw commits through the real server: the center after them."""
    from distkeras_async import registry

    secret = secrets.token_bytes(32)
    synchronous = registry.resolve(algorithm, **hyper).synchronous
    workers = 3 if synchronous else 1
    server = _server(algorithm, workers, secret, **hyper)
    try:
        clients = [_client(server, secret, w) for w in range(workers)]
        updates = _vectors(2, 6)
        if synchronous:
            for round_ in range(2):
                threads = [
                    threading.Thread(target=clients[w].commit_pull, args=(updates[3 * round_ + w],))
                    for w in range(workers)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
        else:
            clients[0].pull()
            for update in updates[:5]:  # staleness 0..4
                clients[0].commit(update * np.float32(0.5))
            clients[0].commit_pull(updates[5])
        for client in clients:
            client.close()
        return server.center_flat.copy()
    finally:
        server.stop()


def worker_and_server(algorithm: Any, hyper: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One worker's whole session through the real server: final center and weights."""
    from distkeras_async import registry

    secret = secrets.token_bytes(32)
    server = _server(algorithm, 1, secret, **hyper)
    try:
        client = _client(server, secret, 0)
        rule = registry.resolve(algorithm, **hyper)
        start, target = _vectors(3, 2)
        model = QuadraticModel(start, target)
        batches = [0.01 * ((i % 5) - 2) for i in range(23)]
        run_worker(model, rule, client, batches)
        client.close()
        return {"center": server.center_flat.copy(), "weights": model.weights.copy()}
    finally:
        server.stop()


def run_all() -> dict[str, np.ndarray]:
    """Every case's arrays, by ``case/scenario/array``."""
    results: dict[str, np.ndarray] = {}
    cases: dict[str, tuple[Any, dict[str, Any]]] = dict(CASES)
    cases.update({name: (make(), hyper) for name, (make, hyper) in COMPOSED.items()})
    for case, (algorithm, hyper) in cases.items():
        results[f"{case}/server"] = server_rule(algorithm, hyper)
        for key, value in worker_and_server(algorithm, hyper).items():
            results[f"{case}/session/{key}"] = value
    return results


if __name__ == "__main__":
    FIXTURES.parent.mkdir(exist_ok=True)
    arrays = run_all()
    np.savez(FIXTURES, **arrays)
    print(f"recorded {len(arrays)} arrays into {FIXTURES}", file=sys.stderr)
