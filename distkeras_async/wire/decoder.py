"""The incremental frame decoder: fed bytes, or read into, it hands out complete frames.

Two ways to feed it, which may be mixed: :meth:`FrameDecoder.receive_data` copies chunks in
(for tests and fuzzing); :meth:`FrameDecoder.get_buffer` / :meth:`FrameDecoder.buffer_updated`
let a transport read *into* the decoder's buffers (``recv_into`` or
``asyncio.BufferedProtocol``), so a payload goes straight from the socket into the buffer a
payload allocator chose. After any error the decoder is poisoned and refuses further input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from distkeras_async.errors import LocalProtocolError, RemoteProtocolError
from distkeras_async.wire.frames import Frame, FrameHeader, parse_header, tensors_from_payload
from distkeras_async.wire.schema import DEFAULT_MAX_PAYLOAD_BYTES, MAX_HEADER_BYTES, PREFIX

# --------------------------------------------------------------------------- decoding

PayloadAllocator = Callable[[FrameHeader], "memoryview | None"]
"""Given a validated header, return a writable byte buffer of exactly ``payload_size`` bytes,
or ``None`` to ask the decoder to wait until :meth:`FrameDecoder.provide_payload_buffer`."""

_PREFIX, _HEADER, _PAYLOAD, _WAIT, _BROKEN = range(5)

# While waiting for a payload buffer, bytes that still arrive are staged in chunks this big.
_STAGING_CHUNK = 64 * 1024
# Bytes staged beyond the waiting frame's payload (a pipelined next frame). A transport
# pauses reading while the decoder waits, so only the rest of one read can arrive.
_MAX_STAGED_EXTRA = 1024 * 1024


def _default_allocate(header: FrameHeader) -> memoryview:
    return memoryview(bytearray(header.payload_size))


class FrameDecoder:
    """Incremental decoder: feed it bytes, take complete frames out.

    Two ways to feed it, which may be mixed:

    * :meth:`receive_data` copies a chunk of bytes in (simple; for tests and fuzzing);
    * :meth:`get_buffer` / :meth:`buffer_updated` let the transport read *into* the
      decoder's buffers (``recv_into`` or ``asyncio.BufferedProtocol``), so a payload goes
      straight from the socket into the buffer the allocator chose.

    After any error the decoder is poisoned and refuses further input (like h11).
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        allocate: PayloadAllocator | None = None,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_payload_bytes = max_payload_bytes
        self.allocate: PayloadAllocator = allocate or _default_allocate
        self._frames: deque[Frame] = deque()
        self._prefix = bytearray(PREFIX.size)
        self._header_buf = bytearray()
        self._state = _PREFIX
        self._target: memoryview = memoryview(self._prefix)
        self._filled = 0
        self._header: FrameHeader | None = None
        self._payload: memoryview | None = None
        self._staged = bytearray()
        self._stage_view: memoryview | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def waiting_for_buffer(self) -> bool:
        """True when a header arrived and the allocator asked to wait for a payload buffer."""
        return self._state == _WAIT

    @property
    def pending_header(self) -> FrameHeader | None:
        """The header of the frame being received, once it has been parsed."""
        return self._header

    @property
    def in_frame(self) -> bool:
        """True when part of a frame has arrived but not all of it."""
        return self._state != _PREFIX or self._filled > 0

    # -- feeding ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the decoder; complete frames become available to take."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            buf = self.get_buffer()
            n = min(buf.nbytes, view.nbytes)
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def get_buffer(self) -> memoryview:
        """The writable buffer the next incoming bytes belong in (never empty)."""
        if self._state == _BROKEN:
            raise RemoteProtocolError("decoder is unusable after a protocol error")
        if self._state == _WAIT:
            if self._stage_view is not None:
                # Asked again with no buffer_updated in between (uvloop's TLS transport does
                # this when a TLS record yields no data): the staged bytearray is still
                # exported, so it cannot grow; hand out the same, still unwritten, view.
                return self._stage_view
            start = len(self._staged)
            self._staged.extend(bytes(_STAGING_CHUNK))
            self._stage_view = memoryview(self._staged)[start:]
            return self._stage_view
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last :meth:`get_buffer`."""
        if self._state == _WAIT:
            assert self._stage_view is not None
            self._stage_view.release()
            self._stage_view = None
            del self._staged[len(self._staged) - _STAGING_CHUNK + nbytes :]
            if len(self._staged) > self._header_payload_size() + _MAX_STAGED_EXTRA:
                self._fail("too many bytes arrived while the frame waited for a payload buffer")
            return
        self._filled += nbytes
        try:
            while self._filled == self._target.nbytes and self._state != _WAIT:
                self._advance()
        except (RemoteProtocolError, LocalProtocolError):
            self._state = _BROKEN
            raise

    def provide_payload_buffer(self, buffer: memoryview) -> None:
        """Give the payload buffer the allocator deferred; staged bytes are copied into it."""
        if self._state != _WAIT or self._header is None:
            raise LocalProtocolError("no frame is waiting for a payload buffer")
        self._set_payload(buffer)
        if self._stage_view is not None:  # a get_buffer that was never reported: unwritten
            self._stage_view.release()
            self._stage_view = None
            del self._staged[len(self._staged) - _STAGING_CHUNK :]
        staged = self._staged
        self._staged = bytearray()
        self._state = _PAYLOAD
        take = min(len(staged), self._target.nbytes)
        if take:
            self._target[:take] = staged[:take]
        self.buffer_updated(take)
        if len(staged) > take:  # a pipelined next frame: decode it now
            self.receive_data(memoryview(staged)[take:])

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if more bytes are needed."""
        return self._frames.popleft() if self._frames else None

    # -- internals ----------------------------------------------------------------------

    def _header_payload_size(self) -> int:
        return self._header.payload_size if self._header is not None else 0

    def _fail(self, reason: str) -> None:
        self._state = _BROKEN
        raise RemoteProtocolError(reason)

    def _set_payload(self, buffer: memoryview) -> None:
        assert self._header is not None
        buffer = buffer.cast("B") if buffer.format != "B" else buffer
        if buffer.nbytes != self._header.payload_size or buffer.readonly:
            raise LocalProtocolError("payload buffer has the wrong size or is read-only")
        self._payload = buffer
        self._target = buffer
        self._filled = 0

    def _advance(self) -> None:
        if self._state == _PREFIX:
            (length,) = PREFIX.unpack(self._prefix)
            if length > self.max_header_bytes:
                raise RemoteProtocolError(
                    f"header length {length} exceeds the limit of {self.max_header_bytes}"
                )
            if length == 0:
                raise RemoteProtocolError("empty header")
            self._header_buf = bytearray(length)
            self._target = memoryview(self._header_buf)
            self._filled = 0
            self._state = _HEADER
        elif self._state == _HEADER:
            self._header = parse_header(self._header_buf, self.max_payload_bytes)
            if self._header.payload_size == 0:
                self._emit(memoryview(b""))
                return
            buffer = self.allocate(self._header)
            if buffer is None:
                self._state = _WAIT
                return
            self._set_payload(buffer)
            self._state = _PAYLOAD
        elif self._state == _PAYLOAD:
            assert self._payload is not None
            self._emit(self._payload)

    def _emit(self, payload: memoryview) -> None:
        header = self._header
        assert header is not None
        tensors = tensors_from_payload(header.specs, payload) if header.specs else ()
        self._frames.append(
            Frame(header.op, header.worker, header.attempt, header.seq, header.fields, tensors)
        )
        self._header = None
        self._payload = None
        self._state = _PREFIX
        self._target = memoryview(self._prefix)
        self._filled = 0
