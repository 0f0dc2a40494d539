"""One worker connection on the server: bytes in and out, flow control, lifecycle.

The transport reads straight into the decoder's buffers (``asyncio.BufferedProtocol``), so a
commit's payload goes from the socket into a pooled model-sized buffer with no copy. All
decisions about what a message *means* are the state's (:mod:`distkeras_async._state`);
this class only moves bytes, keeps replies in order and tracks which center buffers its
pending writes still read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from distkeras_async import auth
from distkeras_async._buffers import Buffer
from distkeras_async.errors import DistKerasError, ProtocolError, RemoteProtocolError
from distkeras_async.protocol import FrameDecoder, FrameHeader, Message, Op, encode

if TYPE_CHECKING:
    from distkeras_async._state import ServerState

logger = logging.getLogger("distkeras_async.server")

_PAYLOAD_OPS = frozenset({Op.COMMIT, Op.COMMIT_PULL})

# Requests a peer may queue before reading its replies. A worker sends one request and waits
# for its reply, so any number will do; the bound keeps a flood of small requests from
# growing the queue without limit.
MAX_QUEUED_REQUESTS = 64

# How long a failed connection may linger to let its error frame reach the peer.
LINGER_SECONDS = 2.0


class Connection(asyncio.BufferedProtocol):
    """The server side of one connection."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.nonce = auth.new_nonce()
        self.worker: int | None = None
        self.attempt = 0
        self.authenticated = False
        self.pulled_version = 0
        self.closed = False
        self.said_bye = False
        now = time.monotonic()
        self.opened_at = now
        self.last_activity = now
        self.frame_started: float | None = None
        self.write_blocked_since: float | None = None
        # Replies must go out in request order: while one request waits (a synchronous
        # round, or a center buffer), later requests queue here and reading is paused.
        self.awaiting = False
        self.inbox: deque[tuple[Message, Buffer | None]] = deque()
        self.receive_buffer: Buffer | None = None
        self.sending: list[Buffer] = []
        self.decoder = FrameDecoder(
            max_payload_bytes=state.layout.nbytes, allocate=self._allocate_payload
        )

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # pause_writing/resume_writing must tell us exactly when the transport holds unsent
        # bytes -- views of a center buffer we must not change. TCP transports pause when
        # the buffer is above the high-water mark, TLS transports (asyncio's and uvloop's)
        # when it is at or above it: with 0 they would pause on every check, empty or not.
        tls = transport.get_extra_info("sslcontext") is not None
        self.transport.set_write_buffer_limits(high=1 if tls else 0, low=0)  # type: ignore[union-attr]
        if not self.state.accept(self):
            return
        self.send(Message(Op.CHALLENGE, fields={"nonce": self.nonce}))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.closed:
            return memoryview(bytearray(4096))  # discard what still arrives
        if self.frame_started is None:
            self.frame_started = time.monotonic()
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        self.last_activity = time.monotonic()
        self.state.stats.bytes_in += nbytes
        if self.worker is not None:
            self.state.stats.worker(self.worker).bytes_in += nbytes
        try:
            self.decoder.buffer_updated(nbytes)
            self._collect()
        except ProtocolError as exc:
            self.fail(str(exc))

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        # Backpressure: a peer that does not read its replies gets no more requests handled
        # (process_inbox waits for resume_writing), so it holds at most one center version.
        # Reading is not paused: TLS transports need to read to flush what they write.
        if self.write_blocked_since is None:
            self.write_blocked_since = time.monotonic()

    def resume_writing(self) -> None:
        self.write_blocked_since = None
        self._unhold()
        if not self.awaiting and not self.closed and self.transport is not None:
            self.transport.resume_reading()
            self.process_inbox()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.debug("connection %s lost: %s", self.peer, exc)
        self.closed = True
        self._unhold()
        self.state.receive.cancel(self._on_receive_buffer)
        if self.receive_buffer is not None:
            self.state.receive.release(self.receive_buffer)
            self.receive_buffer = None
        while self.inbox:
            _, buffer = self.inbox.popleft()
            if buffer is not None:
                self.state.receive.release(buffer)
        self.state.forget(self)

    # -- receiving ---------------------------------------------------------------------

    def _allocate_payload(self, header: FrameHeader) -> memoryview | None:
        # Checked before a single payload byte is read or a buffer is taken: an
        # unauthenticated peer cannot make the server allocate anything model-sized.
        if not self.authenticated:
            raise RemoteProtocolError("tensors sent before the handshake completed")
        if header.op not in _PAYLOAD_OPS:
            raise RemoteProtocolError(f"a worker may not send tensors with {header.op.value!r}")
        expected = self.state.layout.flat_spec()
        if header.specs != (expected,):
            got = [spec.to_wire() for spec in header.specs][:3]
            raise RemoteProtocolError(
                f"update must be one float32 vector of {expected.size} elements "
                f"(the model's layout), got {got}"
            )
        buffer = self.state.receive.acquire()
        if buffer is None:
            assert self.transport is not None
            self.transport.pause_reading()
            self.state.receive.wait(self._on_receive_buffer)
            return None
        self.receive_buffer = buffer
        return buffer.view

    def _on_receive_buffer(self, buffer: Buffer) -> None:
        if self.closed:
            self.state.receive.release(buffer)
            return
        self.receive_buffer = buffer
        try:
            self.decoder.provide_payload_buffer(buffer.view)
            self._collect()
        except ProtocolError as exc:
            self.fail(str(exc))
            return
        # Reading resumes even while a reply is unsent: a TLS transport must read to flush
        # its writes. Requests still wait in the inbox until the reply has drained.
        if not self.awaiting and self.transport is not None:
            self.transport.resume_reading()

    def _collect(self) -> None:
        while (message := self.decoder.next_message()) is not None:
            if len(self.inbox) >= MAX_QUEUED_REQUESTS:
                raise RemoteProtocolError(
                    f"more than {MAX_QUEUED_REQUESTS} requests sent without reading the replies"
                )
            self.frame_started = None
            buffer = None
            if message.tensors:
                buffer, self.receive_buffer = self.receive_buffer, None
            self.inbox.append((message, buffer))
        self.process_inbox()

    def process_inbox(self) -> None:
        """Handle queued requests in order, stopping at one whose reply must wait."""
        while (
            self.inbox
            and not self.awaiting
            and not self.closed
            and self.write_blocked_since is None
        ):
            message, buffer = self.inbox.popleft()
            try:
                self.state.handle(self, message, buffer)
            except DistKerasError as exc:
                self.fail(str(exc))
            except Exception as exc:  # a bug must not take the server down
                logger.exception("internal error handling %s from %s", message.op, self.peer)
                self.fail(f"internal server error: {type(exc).__name__}")

    def wait_for_reply(self) -> None:
        """The current request is parked: stop reading until :meth:`reply_sent`."""
        self.awaiting = True
        if self.transport is not None:
            self.transport.pause_reading()

    def reply_sent(self) -> None:
        """The parked request was answered: read and handle the next ones."""
        self.awaiting = False
        if self.closed or self.transport is None:
            return
        # As in _on_receive_buffer: read on; process_inbox waits while the reply is unsent.
        self.transport.resume_reading()
        self.process_inbox()

    # -- sending -----------------------------------------------------------------------

    def send(self, message: Message, center: Buffer | None = None) -> None:
        """Write a message; if it carries a center buffer still unsent, hold that buffer."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        # One write per buffer: writelines() joins (copies) on Python 3.11's own loop.
        for chunk in encode(message):
            self.transport.write(chunk)
            self.state.stats.bytes_out += len(chunk)
        if center is not None and self.transport.get_write_buffer_size() > 0:
            self.state.center.hold(center)
            self.sending.append(center)

    def _unhold(self) -> None:
        while self.sending:
            self.state.center.unhold(self.sending.pop())

    def fail(self, reason: str) -> None:
        """Answer an ``error`` frame with ``reason`` and close the connection."""
        if self.closed:
            return
        logger.warning("closing connection %s (worker %s): %s", self.peer, self.worker, reason)
        self.state.stats.rejected += 1
        self.send(Message(Op.ERROR, fields={"message": reason[:4000]}))
        transport = self.transport
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            # Lingering close: closing a socket with unread bytes makes the kernel send a
            # reset, which can destroy the error frame before the peer reads it. Send EOF
            # after the error, discard what still arrives, and close when the peer does
            # (or after LINGER_SECONDS).
            self.closed = True
            transport.write_eof()
            self.state.loop.call_later(LINGER_SECONDS, transport.abort)
            return
        self.close()

    def close(self) -> None:
        """Close after pending writes; ``abort`` if they never drain (see the sweep)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes included."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
