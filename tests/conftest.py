"""Shared fixtures: real servers on 127.0.0.1 that are always stopped."""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distkeras_async import ParameterServer, ParameterServerClient, new_secret
from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import Frame, encode_bytes


@pytest.fixture
def secret() -> bytes:
    return new_secret()


@pytest.fixture
def make_server(secret: bytes) -> Iterator[Callable[..., ParameterServer]]:
    """Start a ParameterServer on 127.0.0.1:0; every one is stopped at teardown."""
    servers: list[ParameterServer] = []

    def make(weights: Any = None, algorithm: Any = "downpour", **kwargs: Any) -> ParameterServer:
        if weights is None:
            weights = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
        kwargs.setdefault("num_workers", 2)
        kwargs.setdefault("secret", secret)
        server = ParameterServer(weights, algorithm, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def connect(secret: bytes) -> Iterator[Callable[..., ParameterServerClient]]:
    """Connect clients; every one is closed at teardown."""
    clients: list[ParameterServerClient] = []

    def make(server: ParameterServer, worker: int = 0, **kwargs: Any) -> ParameterServerClient:
        assert server.port is not None
        kwargs.setdefault("timeout", 20.0)
        client = ParameterServerClient(
            "127.0.0.1", server.port, kwargs.pop("secret", secret), worker, **kwargs
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class RawPeer:
    """A raw socket speaking the protocol by hand, to send what a real client never would."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = FrameDecoder()

    def send(self, message: Frame) -> None:
        self.sock.sendall(encode_bytes(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Frame | None:
        """The next message, or None if the server closed the connection first."""
        while (message := self.decoder.next_frame()) is None:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.decoder.receive_data(data)
        return message

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection (reads until EOF, discarding messages)."""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peer() -> Iterator[Callable[[int], RawPeer]]:
    peers: list[RawPeer] = []

    def make(port: int, timeout: float = 10.0) -> RawPeer:
        peer = RawPeer(port, timeout)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)  # ok: polling state another thread or process changes, bounded


def handshake(peer: RawPeer, secret: bytes, worker: int = 0, attempt: int = 0) -> Frame:
    """Complete the handshake by hand; returns the welcome."""
    from distkeras_async.wire import auth
    from distkeras_async.wire.schema import Op

    challenge = peer.receive()
    assert challenge is not None and challenge.op is Op.CHALLENGE
    proof = auth.client_proof(secret, challenge.fields["nonce"], worker, attempt)
    peer.send(Frame(Op.HELLO, worker, attempt, 0, {"proof": proof, "nonce": auth.new_nonce()}))
    welcome = peer.receive()
    assert welcome is not None and welcome.op is Op.WELCOME, welcome
    return welcome


def serve_handshake(conn: socket.socket, secret: bytes, hyperparameters: dict[str, Any]) -> Any:
    """Play a real server's side of the handshake on ``conn`` (a 3-parameter model, DOWNPOUR
    with ``hyperparameters``); returns the frame decoder, for the requests that follow."""
    from distkeras_async.wire import auth
    from distkeras_async.wire.schema import Op

    nonce = auth.new_nonce()
    conn.sendall(encode_bytes(Frame(Op.CHALLENGE, fields={"nonce": nonce})))
    decoder = FrameDecoder()
    while (hello := decoder.next_frame()) is None:
        decoder.receive_data(conn.recv(4096))
    welcome = {
        "proof": auth.server_proof(secret, hello.fields["nonce"], nonce),
        "layout": [["float32", [3]]],
        "algorithm": "downpour",
        "hyperparameters": hyperparameters,
        "version": 0,
        "num_workers": 1,
        "synchronous": False,
        "next_seq": 1,
        "reply_timeout": 10.0,
        "progress": 0,
    }
    conn.sendall(encode_bytes(Frame(Op.WELCOME, fields=welcome)))
    return decoder


# --------------------------------------------------------------------------- Spark and Keras

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One embedded local[2] Spark session for the whole test run, loopback only."""
    import pyspark.sql as pyspark_sql

    from distkeras_async.spark import FAST_BARRIER_CONF

    builder = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("distkeras-async-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
    )
    for key, value in FAST_BARRIER_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits(spark: Any) -> Any:
    """scikit-learn's bundled digits: a training DataFrame (vector features, one-hot label,
    label_index) and a numpy test set with ``accuracy(model)``."""
    from distkeras_async.datasets import digits as load

    return load(spark)


def make_tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1: server and client contexts and its PEM path."""
    from distkeras_async.tls import write_self_signed_certificate

    cert_path, key_path = write_self_signed_certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=cert_path)
    return server_ctx, client_ctx, Path(cert_path)


# --------------------------------------------------------------------------- no silent skips


# .ci/run's second run sets this: the package comes from a wheel installed into a fresh virtual
# environment, and only the tests marked `wheel` run (elsewhere they are deselected: they test an
# installed wheel, which an editable install is not).
WHEEL_RUN = os.environ.get("DISTKERAS_WHEEL_RUN") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """In the wheel run, refuse to test anything but the installed wheel."""
    if not WHEEL_RUN:
        return
    import sysconfig

    import distkeras_async

    package = Path(distkeras_async.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if not package.is_relative_to(site) or package.is_relative_to(checkout):
        raise pytest.UsageError(
            f"DISTKERAS_WHEEL_RUN=1 but distkeras_async was imported from {package}, not from "
            f"the installed wheel in {site}: run from outside the checkout, with nothing of it "
            "on sys.path or PYTHONPATH"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the `wheel` tests to the wheel run; order the rest (below)."""
    wheel_only = [item for item in items if item.get_closest_marker("wheel") is not None]
    if wheel_only and not WHEEL_RUN:
        config.hook.pytest_deselected(items=wheel_only)
        items[:] = [item for item in items if item.get_closest_marker("wheel") is None]
    order_spark_tests(items)


def order_spark_tests(items: list[pytest.Item]) -> None:
    """Run the tests without the shared Spark session first, then those with it, together.

    Spark stops a Python worker that had no task for a minute, and a new one imports Keras
    again (4-8 s each, one per slot and backend). Subprocess jobs (a cluster, the demo, the
    retries) and long unit-test modules between two Spark tests made the session's workers
    start over several times per run; grouped, they start less often. Whole modules move (a
    module's fixtures are set up once); the order within each group is the collection order.
    """
    spark_modules = {
        item.module.__name__
        for item in items
        if isinstance(item, pytest.Function) and "spark" in item.fixturenames
    }
    items.sort(
        key=lambda item: isinstance(item, pytest.Function) and item.module.__name__ in spark_modules
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With DISTKERAS_FORBID_SKIPS=1 (set by .ci/run), any skipped test fails the run.

    Every dependency CI needs is installed by `.ci/run` itself, so a skip there means a
    missing install step or a broken environment, never a reason to pass.
    """
    if os.environ.get("DISTKERAS_FORBID_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        names = ", ".join(sorted({report.nodeid for report in skipped})[:10])
        if reporter is not None:
            reporter.write_line(
                f"DISTKERAS_FORBID_SKIPS: {len(skipped)} test(s) skipped ({names}); failing",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
