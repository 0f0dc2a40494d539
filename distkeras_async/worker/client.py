"""The worker's side: a blocking client of the parameter server, for use inside a Spark task.

A Spark task is synchronous code, so this is a plain socket client with a timeout on every
call. Updates leave straight from the caller's numpy memory (``sendmsg`` of the header and
the array's buffer) and the center arrives straight into a preallocated array
(``recv_into``); the framing, the messages and the order they may come in
(:mod:`distkeras_async.wire.connection`) are the wire layer's, shared with the server.

Example::

    with ParameterServerClient("127.0.0.1", port, secret, worker_id=0) as ps:
        center = ps.pull()
        center = ps.commit_pull(local_weights - center)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from distkeras_async.algorithm import State, flatten_state
from distkeras_async.errors import (
    AuthenticationError,
    ConnectionClosedError,
    DistKerasError,
    ErrorCode,
    ProtocolError,
    RemoteProtocolError,
    RunFailedError,
    ServerError,
    from_code,
)
from distkeras_async.layout import FLAT_DTYPE, Layout
from distkeras_async.wire import auth
from distkeras_async.wire.compression import ErrorFeedback
from distkeras_async.wire.connection import Connection, Role
from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import FrameHeader
from distkeras_async.wire.messages import (
    NO_CONTROL,
    Ack,
    Bye,
    Center,
    Challenge,
    Commit,
    CommitPull,
    Control,
    Error,
    Hello,
    Message,
    Pull,
    Report,
    RuleState,
    Welcome,
    encode_message,
    from_frame,
)
from distkeras_async.wire.schema import Op
from distkeras_async.worker.centers import CenterReceiver
from distkeras_async.worker.welcome import WelcomeSettings

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# Step records one commit carries (a few KiB); a window with more sends the rest in reports.
_COMMIT_RECORDS = 500


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items() if np.isfinite(v)}


# Errors that the connection or the server raised: leaving the block on one says goodbye.
_FROM_THE_CONNECTION = (
    OSError,
    ProtocolError,
    AuthenticationError,
    ConnectionClosedError,
    ServerError,
    RunFailedError,
)


class ParameterServerClient(WelcomeSettings):
    """A worker's connection to the parameter server.

    It is a :class:`~distkeras_async.worker.protocols.Connection`, the worker loop's
    :class:`~distkeras_async.worker.protocols.ExchangeClient`; the run's settings
    (``algorithm_name``, ``hyperparameters``, ...) are :class:`WelcomeSettings`'.

    Args:
        host: the server's address.
        port: the server's port.
        secret: this run's secret (the same bytes the server was given).
        worker_id: this worker's id, ``0 .. num_workers-1`` (the Spark partition id).
        attempt: the Spark task attempt number; a retried task uses a higher one, so the
            server can tell a retry from a duplicate.
        timeout: seconds any call may wait for the server (synchronous commits may wait a
            round timeout longer).
        connect_timeout: seconds to establish the TCP connection and handshake.
        ssl_context: a client-side TLS context, or None for plain TCP.
        server_hostname: the name to check the server's certificate against (TLS only).

    Raises:
        AuthenticationError: if the server rejects the secret, or cannot prove it holds it.
        ServerError: if the server refuses the connection (the message says why).
        TimeoutError, OSError: if the server cannot be reached in time.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        worker_id: int,
        attempt: int = 0,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.attempt = attempt
        self.timeout = timeout
        self._secret = auth.check_secret(secret)
        self._seq = 0
        self._closed = False
        self._decoder = FrameDecoder(allocate=self._allocate)
        # The protocol's order, checked on every message either way (wire/connection.py).
        self._conn = Connection(Role.CLIENT)
        self.duplicates = 0
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            self._sock = sock
            self._tls = ssl_context is not None
            self._handshake()
        except BaseException:
            sock.close()
            self._closed = True
            raise
        self._sock.settimeout(self.reply_timeout(timeout))

    # -- handshake ---------------------------------------------------------------------

    def _handshake(self) -> None:
        challenge = self._receive(Challenge)
        nonce = auth.new_nonce()
        proof = auth.client_proof(self._secret, challenge.nonce, self.worker_id, self.attempt)
        self._send(Hello(proof, nonce, **self._ids()))
        welcome = self._receive(Welcome)
        expected = auth.server_proof(self._secret, nonce, challenge.nonce)
        if not auth.verify(expected, welcome.proof):
            raise AuthenticationError("the parameter server could not prove it holds the secret")
        # The run's settings are read from the welcome itself (see WelcomeSettings).
        self.welcome = welcome
        self.layout = Layout(welcome.layout)
        self.version: int = welcome.version
        self._seq = max(self._seq, welcome.next_seq)
        self.progress: int = welcome.progress
        # The rule's state when the server accepted this worker's last commit (a retried
        # attempt resumes with it), and where the state each commit leaves comes from.
        self.restored_state: tuple[np.ndarray, ...] | None = (
            self._receive(RuleState).arrays if welcome.state else None
        )
        self.state_source: Callable[[], State] | None = None
        # (index, count) when this server holds one shard of a sharded center.
        self.shard: tuple[int, int] | None = welcome.shard
        # The worker's local steps so far, and the records of the steps the next commit
        # adds; both travel with the next commit (see Commit.steps and Commit.history).
        self.steps: int | None = None
        self.history: list[tuple[int, float, Mapping[str, float]]] = []
        # The version of the center the next commit was computed from, when older than the
        # latest reply (an overlapped worker's); sent with it once.
        self.base: int | None = None
        # The driver's latest requests (stop, a learning rate), from the latest reply.
        self.control: Control = NO_CONTROL
        # A compressed commit dtype keeps the rounding error of each commit for the next
        # (error feedback).
        self._encoder = (
            None
            if self.commit_dtype == "float32"
            else ErrorFeedback(self.commit_dtype, [spec.size for spec in self.layout.specs])
        )
        # A compressed pull dtype keeps the center as the replies built it.
        self._centers = CenterReceiver(self.layout, self.pull_dtype)

    @property
    def carries_state(self) -> bool:
        """A rule's state travels with this connection's commits (``state`` messages)."""
        return True

    @property
    def versions(self) -> tuple[int, ...]:
        """The center's version in the latest reply (one per shard for a sharded client)."""
        return (self.version,)

    @property
    def bases(self) -> tuple[int, ...] | None:
        """The next commit's ``base`` (see :attr:`base`), as ``versions`` is given."""
        return None if self.base is None else (self.base,)

    @bases.setter
    def bases(self, value: tuple[int, ...] | None) -> None:
        self.base = None if value is None else value[0]

    @property
    def num_params(self) -> int:
        """Number of float32 parameters in the flat vector."""
        return self.layout.size

    # -- requests ----------------------------------------------------------------------

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        """Fetch the center as a flat float32 vector (received into ``out`` if given)."""
        self.send_pull()
        return self.receive_center(out)

    def commit(self, update: np.ndarray) -> None:
        """Send an update for the server rule and wait until it is accepted."""
        self.send_commit(update, pull=False)
        self.receive_ack()

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Send an update and receive the center after it was applied, in one round trip."""
        self.send_commit(update, pull=True)
        return self.receive_center(out)

    # The halves of each request, so a sharded client can send to every shard before it
    # waits for the first reply (the shards then work at the same time).

    def send_pull(self) -> None:
        """Send a pull request; :meth:`receive_center` takes the reply."""
        self._send(Pull(**self._ids()))

    def send_commit(self, update: np.ndarray, *, pull: bool) -> None:
        """Send a commit (a commit_pull when ``pull``); receive_ack/receive_center follows.

        With a :attr:`state_source`, the rule's state goes just ahead of the commit, for
        the server to keep if it accepts the commit.
        """
        message = self._commit_message(CommitPull if pull else Commit, update)
        if self.state_source is not None:
            self._send(RuleState(tuple(flatten_state(self.state_source())), **self._ids()))
        self._send(message)

    def receive_ack(self) -> None:
        """Wait for the acknowledgement of a commit."""
        reply = self._receive(Ack)
        self.version, self.control = reply.version, reply.control
        if reply.duplicate:
            self.duplicates += 1

    def _commit_message(self, kind: type[Commit], update: np.ndarray) -> Commit:
        """``update`` as the run's commit dtype carries it (plus the steps' records)."""
        tensors: tuple[np.ndarray, ...] = (self._check_update(update),)
        if self._encoder is not None:
            tensors = self._encoder.encode(tensors[0])
        scales = tensors[1] if len(tensors) > 1 else None
        base, self.base = self.base, None
        return kind(tensors[0], self.steps, self._take_history(), scales, base, **self._ids())

    def _take_history(self) -> tuple[tuple[int, float, Mapping[str, float]], ...]:
        """The step records for the next commit; a long backlog goes ahead in reports."""
        records, self.history = self.history, []
        while len(records) > _COMMIT_RECORDS:  # a window longer than the header holds
            self.report({}, records[:_COMMIT_RECORDS])
            records = records[_COMMIT_RECORDS:]
        return tuple((int(i), float(t), _finite(m)) for i, t, m in records)

    def report(
        self,
        metrics: Mapping[str, float],
        history: Sequence[tuple[int, float, Mapping[str, float]]] = (),
        *,
        epoch: int | None = None,
    ) -> None:
        """Send metrics (e.g. the latest loss), and step records, for the server to keep.

        Args:
            metrics: the latest metrics (non-finite values are left out).
            history: ``(iteration, timestamp, metrics)`` of the steps since the last report
                (at most ``MAX_HISTORY``; non-finite metric values are left out).
            epoch: set when ``metrics`` are the logs of this worker's ``epoch``-th pass over
                its data (from 1), just finished: the driver's epoch callbacks wait for them.
        """
        self.send_report(metrics, history, epoch=epoch)
        self.receive_report_ack()

    def send_report(
        self,
        metrics: Mapping[str, float],
        history: Sequence[tuple[int, float, Mapping[str, float]]] = (),
        *,
        epoch: int | None = None,
    ) -> None:
        """Send a report (see :meth:`report`); :meth:`receive_report_ack` takes the reply."""
        self._send(
            Report(
                _finite(metrics),
                tuple((int(i), float(t), _finite(m)) for i, t, m in history),
                epoch,
                **self._ids(),
            )
        )

    def receive_report_ack(self) -> None:
        """Wait for the acknowledgement of a report."""
        self.control = self._receive(Ack).control

    def report_error(self, message: str) -> None:
        """Tell the server this worker failed (a synchronous run then fails at once), and close."""
        if self._closed:
            return
        with contextlib.suppress(OSError, DistKerasError):
            self._send(Error.of(ErrorCode.WORKER_FAILED, message, **self._ids()))
        self._shutdown()

    def close(self) -> None:
        """Say goodbye (the worker finished) and close the connection. Idempotent."""
        if self._closed:
            return
        with contextlib.suppress(OSError, DistKerasError):
            self._send(Bye(**self._ids()))
        self._shutdown()

    def __enter__(self) -> ParameterServerClient:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # The worker's own failure (its model, its data, a diverged loss) is reported, so a
        # synchronous run fails at once and no one counts the worker as finished; an error
        # that came from the connection or the server is already known there.
        if exc is not None and not isinstance(exc, _FROM_THE_CONNECTION):
            self.report_error(f"{type(exc).__name__}: {exc}")
        else:
            self.close()

    # -- plumbing ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._closed = True
        self._conn.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _check_update(self, update: np.ndarray) -> np.ndarray:
        if not isinstance(update, np.ndarray) or update.dtype != FLAT_DTYPE:
            raise TypeError("an update must be a float32 numpy array")
        if update.shape != (self.layout.size,):
            raise ValueError(
                f"an update must be a flat vector of {self.layout.size} elements, "
                f"got shape {update.shape}"
            )
        return update

    def _ids(self) -> dict[str, int]:
        """This worker's identity and the next sequence number (which it consumes)."""
        seq = self._seq
        self._seq += 1
        return {"worker": self.worker_id, "attempt": self.attempt, "seq": seq}

    def _send(self, message: Message) -> None:
        if self._closed:
            raise ConnectionClosedError("the client is closed")
        self._conn.sent(message)
        buffers = [memoryview(b) for b in encode_message(message)]
        try:
            if self._tls:
                for buf in buffers:  # SSL sockets have no sendmsg
                    self._sock.sendall(buf)
                return
            while buffers:
                sent = self._sock.sendmsg(buffers)
                while sent:
                    if sent >= buffers[0].nbytes:
                        sent -= buffers[0].nbytes
                        buffers.pop(0)
                    else:
                        buffers[0] = buffers[0][sent:]
                        sent = 0
        except TimeoutError:
            self._shutdown()
            raise TimeoutError(f"sending {message.op.value!r} took more than the timeout") from None
        except OSError:
            self._shutdown()
            raise

    def _allocate(self, header: FrameHeader) -> memoryview:
        if not self._conn.may_carry_tensors(header.op):
            raise RemoteProtocolError(f"unexpected tensors in a {header.op.value!r} message")
        if header.op is Op.STATE:  # the rule's state, right after the welcome
            return memoryview(bytearray(header.payload_size))
        return self._centers.allocate(header)

    def receive_center(self, out: np.ndarray | None = None) -> np.ndarray:
        """Receive the center of a pull or commit_pull (into ``out`` if given)."""
        self._centers.expect(out)
        try:
            reply = self._receive(Center)
            result = self._centers.received(reply, out)
        except RemoteProtocolError:
            self._shutdown()
            raise
        finally:
            self._centers.forget()
        self.version, self.control = reply.version, reply.control
        if reply.duplicate:
            self.duplicates += 1
        return result

    def _receive(self, expected: type[M]) -> M:
        if self._closed:
            raise ConnectionClosedError("the client is closed")
        decoder = self._decoder
        try:
            while (frame := decoder.next_frame()) is None:
                n = self._sock.recv_into(decoder.get_buffer())
                if n == 0:
                    raise ConnectionClosedError("the parameter server closed the connection")
                decoder.buffer_updated(n)
            message = from_frame(frame)
        except TimeoutError:
            self._shutdown()
            raise TimeoutError(
                f"no {expected.op.value!r} reply from the parameter server within "
                f"{self._sock.gettimeout()} s"
            ) from None
        except (OSError, DistKerasError):
            self._shutdown()
            raise
        if isinstance(message, Error):
            self._shutdown()
            raise from_code(message.code, message.message)
        try:
            self._conn.received(message)
        except RemoteProtocolError:
            self._shutdown()
            raise
        if not isinstance(message, expected):
            self._shutdown()
            raise RemoteProtocolError(f"expected {expected.op.value!r}, got {message.op.value!r}")
        return message
