"""Every registered algorithm, with 4 numpy workers through a real server, solves least squares."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest

from distkeras_async import ParameterServer, ParameterServerClient, new_secret, registry, run_worker

FEATURES, ROWS, WORKERS, BATCH, EPOCHS = 8, 1200, 4, 16, 6


class LinearModel:
    """A numpy LocalModel: linear regression trained by plain SGD."""

    def __init__(self, features: int, learning_rate: float) -> None:
        self.w = np.zeros(features, np.float32)
        self.learning_rate = np.float32(learning_rate)

    def get_flat(self) -> np.ndarray:
        return self.w.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        self.w[...] = flat

    def train_step(self, batch: tuple[np.ndarray, np.ndarray]) -> Mapping[str, float]:
        x, y = batch
        error = x @ self.w - y
        self.w -= self.learning_rate * (x.T @ error) / len(y)
        return {"loss": float(np.mean(error**2))}


def make_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    w_true = rng.normal(size=FEATURES).astype(np.float32)
    y = (x @ w_true + 0.01 * rng.normal(size=ROWS)).astype(np.float32)
    return x, y, w_true


HYPERPARAMETERS = {
    "downpour": {"communication_window": 4},
    "adag": {"communication_window": 4},
    "dynsgd": {"communication_window": 4},
    "easgd": {"communication_window": 4, "learning_rate": 0.05, "rho": 5.0},
    "aeasgd": {"communication_window": 4, "learning_rate": 0.05, "rho": 5.0},
    "eamsgd": {"communication_window": 4, "learning_rate": 0.05, "rho": 5.0, "momentum": 0.5},
    "averaging": {"communication_window": 4},
}


@pytest.mark.parametrize("name", sorted(HYPERPARAMETERS))
def test_algorithm_converges_on_least_squares(name):
    assert set(HYPERPARAMETERS) <= set(registry.available())
    x, y, w_true = make_problem()
    secret = new_secret()
    hyper = HYPERPARAMETERS[name]
    server = ParameterServer(
        [np.zeros(FEATURES, np.float32)],
        name,
        num_workers=WORKERS,
        secret=secret,
        round_timeout=60,
        **hyper,
    )
    port = server.start()
    errors: list[BaseException] = []
    histories: dict[int, list] = {}

    def worker(i: int) -> None:
        try:
            shard = slice(i * ROWS // WORKERS, (i + 1) * ROWS // WORKERS)
            xs, ys = x[shard], y[shard]
            batches = [
                (xs[j : j + BATCH], ys[j : j + BATCH])
                for _ in range(EPOCHS)
                for j in range(0, len(ys), BATCH)
            ]
            algorithm = registry.get(name)(**hyper)
            with ParameterServerClient("127.0.0.1", port, secret, i, timeout=60) as client:
                histories[i] = run_worker(
                    LinearModel(FEATURES, 0.05),
                    algorithm,
                    client,
                    batches,
                    worker_id=i,
                    on_exchange=client.report,
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        assert not errors, errors
        server.raise_for_failure()
        (center,) = server.center
        stats = server.stats()
    finally:
        server.stop()
    initial_error = float(np.linalg.norm(w_true))
    final_error = float(np.linalg.norm(center - w_true))
    assert final_error < 0.05 * initial_error, (name, final_error, initial_error)
    assert (
        stats.commits
        >= WORKERS * (EPOCHS * ROWS // WORKERS // BATCH) // hyper["communication_window"]
    )
    assert all(stats.workers[i].last_loss is not None for i in range(WORKERS))
    assert all(len(histories[i]) == EPOCHS * (ROWS // WORKERS // BATCH + 1) for i in range(WORKERS))
