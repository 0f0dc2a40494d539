"""One connection's protocol state: handshake, identity, requests in order, replies.

A :class:`Session` keeps its connection's phase in a
:class:`~distkeras_async.wire.connection.Connection` (the protocol's one state machine, shared
with the worker's client): which typed messages a peer may send now, and whether a frame may
carry a payload at all (a commit in the run's commit codec, or the rule's state, only after
the handshake, checked before a payload byte is read or a buffer is taken). It owns
everything that belongs to its connection: the worker id and attempt, the version it last
pulled, the decoder and its receive buffer, the requests queued behind one that waits, and
the center buffers its unsent replies still read.

It moves no bytes itself: a :class:`Link` (the transport) does, and the shared
:class:`~distkeras_async.server.core.ServerCore` decides what requests mean.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from distkeras_async.errors import (
    AuthenticationError,
    ErrorCode,
    LimitExceededError,
    ProtocolError,
    RemoteProtocolError,
    RunFailedError,
)
from distkeras_async.server.buffers import Buffer, Lease
from distkeras_async.server.core import ServerCore
from distkeras_async.server.limits import Limits
from distkeras_async.server.replies import CenterReplies
from distkeras_async.server.stats import WorkerStats
from distkeras_async.wire import auth
from distkeras_async.wire.connection import Connection, Role
from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import FrameHeader
from distkeras_async.wire.messages import (
    NO_CONTROL,
    Bye,
    Challenge,
    Commit,
    Control,
    Error,
    Hello,
    Message,
    Pull,
    Report,
    RuleState,
    encode_message,
    from_frame,
)
from distkeras_async.wire.schema import Op

logger = logging.getLogger("distkeras_async.server")

# Requests a peer may queue before reading its replies. A worker sends one request and waits
# for its reply, so any number will do; the bound keeps a flood of small requests from
# growing the queue without limit.
MAX_QUEUED_REQUESTS = 64


# Messages that get a reply; the session waits for it before handling the next request.
_REPLIED = (Pull, Commit, Report)


class Link(Protocol):
    """What a session needs from its transport."""

    peer: str
    last_activity: float
    write_blocked_since: float | None

    def write(self, chunks: Sequence[bytes | memoryview]) -> int:
        """Write ``chunks``; returns the bytes still unsent in the transport afterwards."""
        ...

    def pause_reading(self) -> None:
        """Stop reading (bytes stay in the kernel)."""
        ...

    def resume_reading(self) -> None:
        """Read again."""
        ...

    def close_after_error(self) -> None:
        """Close once the error frame is out (a lingering close)."""
        ...

    def close(self) -> None:
        """Close after pending writes."""
        ...

    def abort(self) -> None:
        """Drop the connection at once."""
        ...


class _Request:
    """A decoded request waiting its turn; owns its payload's lease, if any."""

    __slots__ = ("lease", "message")

    def __init__(self, message: Message, lease: Lease | None) -> None:
        self.message = message
        self.lease = lease

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


class Session:
    """The server side of one connection (implements the core's ``Peer``).

    Args:
        core: the server's shared state.
        link: the transport that moves this connection's bytes.
        schedule: ``loop.call_soon``: a reply that arrives from another connection's
            handler (a round completing) resumes this session's queue on the next loop
            iteration, never inside that handler.
    """

    def __init__(
        self, core: ServerCore, link: Link, schedule: Callable[[Callable[[], None]], object]
    ) -> None:
        self.core = core
        self.link = link
        self._schedule = schedule
        # The protocol's order, checked on every message either way (wire/connection.py).
        self.conn = Connection(Role.SERVER)
        self.nonce = auth.new_nonce()
        self._worker: int | None = None
        self._worker_stats: WorkerStats | None = None
        self.attempt = 0
        self.pulled_version = 0
        self.said_bye = False
        self.opened_at = time.monotonic()
        self.frame_started: float | None = None
        # Replies go out in request order: while one request waits for its reply (a
        # synchronous round, a center buffer), later ones queue here and reading pauses.
        self.awaiting = False
        self._inbox: deque[_Request] = deque()
        self._receiving: Lease | None = None
        self._replies = CenterReplies(core)
        self._replied = False
        self.decoder = FrameDecoder(
            max_payload_bytes=max(
                core.layout.nbytes, core.commits.nbytes, core.worker_states.nbytes
            ),
            allocate=self._allocate_payload,
        )

    @property
    def worker(self) -> int | None:
        """The authenticated worker id, or None before the handshake."""
        return self._worker

    @property
    def closed(self) -> bool:
        """Whether the session has ended (nothing more is read or handled)."""
        return self.conn.closed

    # -- the transport calls these ------------------------------------------------------

    def opened(self) -> None:
        """The connection is up: admit it and send the challenge."""
        try:
            self.core.admit(self)
        except ProtocolError as exc:
            self.fail(_code(exc), str(exc))
            return
        if self.core.failure is not None:
            self.fail(self.core.failure.code, self.core.failure.reason)
            return
        self._write([Challenge(self.nonce)])

    # buffer() and received() run once per read: a 4 MB commit arrives in about 16 reads on
    # loopback, so they stay lean (measured: 12% of the server's time with more layers).

    def buffer(self) -> memoryview:
        """Where the next incoming bytes go."""
        if self.conn.closed:
            return memoryview(bytearray(4096))  # discard what still arrives
        # No clock here: uvloop asks for the next buffer as soon as a read ends, long before
        # the next frame's first byte (a worker may compute for minutes between two frames).
        return self.decoder.get_buffer()

    def received(self, nbytes: int) -> None:
        """``nbytes`` arrived in the last :meth:`buffer`."""
        if self.conn.closed:
            return
        self.core.stats.bytes_in += nbytes
        if self._worker_stats is not None:
            self._worker_stats.bytes_in += nbytes
        # A frame's timer starts with its first byte; the silence before it is idle time.
        if self.frame_started is None:
            self.frame_started = time.monotonic()
        try:
            self.decoder.buffer_updated(nbytes)
            if self._collect():
                self._process()
        except Exception as exc:
            self._failed(exc)

    def writable(self) -> None:
        """The transport drained its write buffer: unsent centers are sent, go on."""
        self._replies.release()
        if not self.closed:
            if not self.awaiting:
                self.link.resume_reading()
            self._process()

    def lost(self) -> None:
        """The connection is gone: release everything this session owns."""
        self.conn.close()
        self._replies.release()
        self.core.receive.cancel(self._on_receive_buffer)
        if self._receiving is not None:
            self._receiving.release()
            self._receiving = None
        while self._inbox:
            self._inbox.popleft().release()
        self.core.forget(self, said_bye=self.said_bye)

    # -- receiving ---------------------------------------------------------------------

    def _allocate_payload(self, header: FrameHeader) -> memoryview | None:
        # Checked before a single payload byte is read or a buffer is taken: an
        # unauthenticated peer cannot make the server allocate anything model-sized.
        if not self.conn.ready:
            raise RemoteProtocolError("tensors sent before the handshake completed")
        if not self.conn.may_carry_tensors(header.op):
            raise RemoteProtocolError(f"a worker may not send tensors with {header.op.value!r}")
        if header.op is Op.STATE:
            # A rule's state lands in its own buffer: the server keeps it until the worker's
            # next accepted commit brings another.
            self.core.worker_states.check(header.specs)
            return memoryview(bytearray(header.payload_size))
        self.core.commits.check(header.specs)
        lease = self.core.receive.acquire()
        if lease is None:
            self.link.pause_reading()
            self.core.receive.wait(self._on_receive_buffer)
            return None
        self._receiving = lease
        return self.core.payload_view(lease)

    def _on_receive_buffer(self, lease: Lease) -> None:
        if self.closed:
            lease.release()
            return
        self._receiving = lease
        try:
            self.decoder.provide_payload_buffer(self.core.payload_view(lease))
            if self._collect():
                self._process()
        except Exception as exc:
            self._failed(exc)
        # Reading resumes even while a reply is unsent: a TLS transport must read to flush
        # its writes. Requests still wait in the inbox until the reply has drained.
        if not self.closed and not self.awaiting:
            self.link.resume_reading()

    def _collect(self) -> bool:
        """Queue the frames the decoder completed; whether there were any."""
        collected = False
        while (frame := self.decoder.next_frame()) is not None:
            collected = True
            self.frame_started = None
            lease = None
            if frame.tensors and frame.op is not Op.STATE:
                lease, self._receiving = self._receiving, None
                assert lease is not None
                frame = self.core.decoded(frame, lease)
            request = _Request(from_frame(frame), lease)
            if len(self._inbox) >= MAX_QUEUED_REQUESTS:
                request.release()
                raise LimitExceededError(
                    f"more than {MAX_QUEUED_REQUESTS} requests sent without reading the replies"
                )
            self._inbox.append(request)
        if collected and self.decoder.in_frame:
            # The read that completed these frames also began the next one.
            self.frame_started = time.monotonic()
        return collected

    def _failed(self, exc: Exception) -> None:
        """Close this connection with the error frame ``exc`` calls for."""
        if isinstance(exc, ProtocolError | AuthenticationError | RunFailedError):
            self.fail(_code(exc), str(exc))
        else:  # a bug must not take the server down
            logger.exception("internal error on connection %s", self.link.peer)
            self.fail(ErrorCode.INTERNAL, f"internal server error: {type(exc).__name__}: {exc}")

    # -- handling ----------------------------------------------------------------------

    def _process(self) -> None:
        """Handle queued requests in order, stopping at one whose reply must wait."""
        while (
            self._inbox
            and not self.awaiting
            and not self.closed
            and self.link.write_blocked_since is None
        ):
            request = self._inbox.popleft()
            try:
                self._handle(request)
            except Exception as exc:
                self._failed(exc)
            finally:
                request.release()

    def _handle(self, request: _Request) -> None:
        message = request.message
        self.conn.received(message)
        if isinstance(message, Hello):
            self._hello(message)
            return
        if message.worker != self._worker or message.attempt != self.attempt:
            raise RemoteProtocolError("worker id or attempt changed within a connection")
        worker = message.worker
        self.core.seen(worker)
        self._replied = False
        if isinstance(message, RuleState):  # held for the next commit; no reply
            self.core.worker_states.hold(self, message.arrays)
            return
        if isinstance(message, Pull):
            self.core.pull(self, worker)
        elif isinstance(message, Commit):
            assert request.lease is not None
            # An overlapped worker's update may come from an older center than the last one
            # sent here; a newer one cannot be claimed.
            pulled = self.pulled_version
            if message.base is not None:
                pulled = min(pulled, message.base)
            self.core.commit(self, message, request.lease.take(), pulled)
        elif isinstance(message, Report):
            self.core.report(self, message)
        elif isinstance(message, Bye):
            self.said_bye = True
            self.core.bye(worker, self.attempt)
            self.close()
            return
        else:  # Error: the worker reports its failure and leaves
            assert isinstance(message, Error)
            self.core.worker_failed(worker, message.message)
            self.close()
            return
        if not self._replied and not self.closed:
            # The reply comes later (a round, a center buffer): read nothing meanwhile.
            self.awaiting = True
            self.link.pause_reading()

    def _hello(self, hello: Hello) -> None:
        welcome = self.core.welcome(self, hello, self.nonce)
        self._worker, self.attempt = hello.worker, hello.attempt
        self._worker_stats = self.core.stats.worker(hello.worker)
        self.pulled_version = welcome.version
        kept = self.core.worker_states.kept(hello.worker) if welcome.state else None
        self._write([welcome] if kept is None else [welcome, RuleState(kept)])

    # -- replying (the core calls these) -----------------------------------------------

    def send(self, message: Message) -> None:
        """Reply with a message that carries no center."""
        self._write([message])
        self._answered()

    def send_center(
        self, buffer: Buffer, version: int, duplicate: bool = False, control: Control = NO_CONTROL
    ) -> None:
        """Reply with the center in ``buffer`` (or its change: ``server/replies.py``)."""
        self.pulled_version = version
        message, source = self._replies.message(buffer, version, duplicate, control)
        if self._write([message]) and source is not None and not self.closed:
            self._replies.hold(source)
        self._answered()

    def _answered(self) -> None:
        self._replied = True
        if self.awaiting:
            self.awaiting = False
            if not self.closed:
                self.link.resume_reading()
                self._schedule(self._process)

    def _write(self, messages: Sequence[Message]) -> int:
        if self.closed:
            return 0
        chunks: list[bytes | memoryview] = []
        for message in messages:
            self.conn.sent(message)
            chunks.extend(encode_message(message))
        return self.link.write(chunks)

    # -- ending ------------------------------------------------------------------------

    def fail(self, code: ErrorCode, reason: str) -> None:
        """Send an ``error`` frame with ``code`` and ``reason``, then close."""
        if self.closed:
            return
        logger.warning(
            "closing connection %s (worker %s): %s", self.link.peer, self._worker, reason
        )
        self.core.stats.rejected += 1
        self._write([Error.of(code, reason)])
        self.conn.close()
        self.link.close_after_error()

    def close(self) -> None:
        """Close after pending writes."""
        self.conn.close()
        self.link.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes included."""
        self.conn.close()
        self.link.abort()

    def sweep(self, now: float, limits: Limits) -> None:
        """Close the connection if one of its timeouts expired."""
        timeouts = limits.timeouts
        blocked = self.link.write_blocked_since
        if blocked is not None and now - blocked > timeouts.send_timeout:
            logger.warning(
                "aborting %s: it has not read its reply for %gs",
                self.link.peer,
                timeouts.send_timeout,
            )
            self.abort()
        elif self.closed:
            return
        elif not self.conn.ready and now - self.opened_at > timeouts.handshake_timeout:
            self.fail(
                ErrorCode.LIMIT, f"handshake not completed within {timeouts.handshake_timeout:g} s"
            )
        elif self.frame_started is not None and now - self.frame_started > timeouts.frame_timeout:
            self.fail(ErrorCode.LIMIT, f"frame not completed within {timeouts.frame_timeout:g} s")
        elif not self.awaiting and now - self.link.last_activity > timeouts.idle_timeout:
            self.fail(ErrorCode.LIMIT, f"idle for more than {timeouts.idle_timeout:g} s")


def _code(exc: BaseException) -> ErrorCode:
    if isinstance(exc, AuthenticationError):
        return ErrorCode.AUTHENTICATION
    code = getattr(exc, "code", None)
    return code if isinstance(code, ErrorCode) else ErrorCode.PROTOCOL
