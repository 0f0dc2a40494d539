"""One connection's bytes: reading into the session's buffers, writing, flow control, closing.

The transport reads straight into the decoder's buffers (``asyncio.BufferedProtocol``), so a
commit's payload goes from the socket into a pooled model-sized buffer with no copy. It
knows nothing of what the bytes mean: its :class:`~distkeras_async.server.session.Session`
does. This class only tracks when bytes last moved, whether the peer reads what it is sent
(``pause_writing``/``resume_writing``), and closes the connection the way an error frame
needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from distkeras_async.server.session import Session

logger = logging.getLogger("distkeras_async.server")

# How long a failed connection may linger to let its error frame reach the peer.
LINGER_SECONDS = 2.0

SessionFactory = Callable[["Transport"], Session]


class Transport(asyncio.BufferedProtocol):
    """The bytes of one server connection (the ``Link`` of its session).

    Args:
        make_session: builds this connection's session, given the transport.
    """

    def __init__(self, make_session: SessionFactory) -> None:
        self._make_session = make_session
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.last_activity = time.monotonic()
        self.write_blocked_since: float | None = None
        self._closing = False

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set flow control up and start the session."""
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # pause_writing/resume_writing must tell us exactly when the transport holds unsent
        # bytes -- views of a center buffer that must not be reused. TCP transports pause when
        # the buffer is above the high-water mark, TLS transports (asyncio's and uvloop's)
        # when it is at or above it: with 0 they would pause on every check, empty or not.
        tls = transport.get_extra_info("sslcontext") is not None
        self.transport.set_write_buffer_limits(high=1 if tls else 0, low=0)  # type: ignore[union-attr]
        self.session = self._make_session(self)
        self.session.opened()

    def get_buffer(self, sizehint: int) -> memoryview:
        """The session's buffer for the next bytes (a scratch buffer once closing)."""
        if self._closing or self.session is None:
            return memoryview(bytearray(4096))  # discard what still arrives
        return self.session.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """Bytes arrived: hand them to the session."""
        self.last_activity = time.monotonic()
        if not self._closing and self.session is not None:
            self.session.received(nbytes)

    def eof_received(self) -> bool:
        """The peer closed its side: close ours too."""
        return False

    def pause_writing(self) -> None:
        """The peer is not reading: no request is handled until it does."""
        # Reading is not paused: TLS transports need to read to flush what they write.
        if self.write_blocked_since is None:
            self.write_blocked_since = time.monotonic()

    def resume_writing(self) -> None:
        """Everything written has left: unsent centers are free, handle requests again."""
        self.write_blocked_since = None
        if self.session is not None:
            self.session.writable()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone; the session releases what it holds."""
        if exc is not None:
            logger.debug("connection %s lost: %s", self.peer, exc)
        self._closing = True
        if self.session is not None:
            self.session.lost()

    # -- the session calls these (its Link) --------------------------------------------

    def write(self, chunks: Sequence[bytes | memoryview]) -> int:
        """Write ``chunks``; returns how many bytes the transport could not send at once."""
        transport = self.transport
        if self._closing or transport is None or transport.is_closing():
            return 0
        # One write per buffer: writelines() joins (copies) on Python 3.11's own loop.
        for chunk in chunks:
            transport.write(chunk)
        if self.session is not None:
            self.session.core.stats.bytes_out += sum(len(c) for c in chunks)
        return transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        """Stop reading: the peer's bytes wait in the kernel."""
        if self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def close_after_error(self) -> None:
        """Lingering close: the error frame must reach the peer before the connection goes.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy
        the error frame before the peer reads it. So: send EOF after the error, discard what
        still arrives, and close when the peer does (or after ``LINGER_SECONDS``).
        """
        transport = self.transport
        self._closing = True
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)
        else:
            transport.close()

    def close(self) -> None:
        """Close after pending writes (the server's sweep aborts one that never drains)."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes included."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
