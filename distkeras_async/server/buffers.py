"""Model-sized buffers for the server, each with exactly one owner at a time.

The server never allocates a model-sized buffer per message: commits are received into
buffers of a bounded :class:`BufferPool`, and the center lives in a :class:`CenterStore`.
Both are bounded, which keeps the server's memory at a few times the model's size however
many workers connect; a connection that finds no free buffer waits (its reading is paused
and its bytes stay in the kernel) until one is released.

Ownership is explicit. ``acquire`` returns a :class:`Lease`: whoever holds it must release
it, and releasing is idempotent, so the holder does it in ``finally`` (or ``with lease:``)
and hands it on with :meth:`Lease.take` when another owner takes over (a commit's buffer
goes from the decoder to the request, to a synchronous round, to the rule). No code path
"remembers" to release by hand.

The center is sent to workers straight from its own memory. A new center is computed into
a spare buffer and published only when the rule returned and the result is finite, so the
published center is never half-updated; the old one goes back to the pool when every send
still reading it has drained (its ``holds``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

import numpy as np

from distkeras_async.layout import FLAT_DTYPE

Schedule = Callable[[Callable[[], None]], object]


def _run_now(callback: Callable[[], None]) -> object:
    callback()
    return None


class Buffer:
    """One flat float32 buffer, with a count of pending sends that still read from it."""

    __slots__ = ("array", "holds", "view", "wire")

    def __init__(self, size: int, array: np.ndarray | None = None) -> None:
        self.array = np.empty(size, FLAT_DTYPE) if array is None else array
        self.view = self.array.data.cast("B")
        self.holds = 0
        # Where a compressed commit lands before it is decoded into ``array``; made on the
        # first one and kept with the buffer, like the buffer itself.
        self.wire: memoryview | None = None

    def wire_view(self, nbytes: int) -> memoryview:
        """A reusable byte buffer of ``nbytes`` for a compressed payload."""
        if self.wire is None or len(self.wire) != nbytes:
            self.wire = memoryview(bytearray(nbytes))
        return self.wire


class Lease:
    """The right to use one pooled buffer until :meth:`release` (idempotent).

    Usable as a context manager: ``with pool.acquire() as lease:`` releases on every path
    unless the buffer was handed on with :meth:`take`.
    """

    __slots__ = ("_buffer", "_pool")

    def __init__(self, pool: BufferPool, buffer: Buffer) -> None:
        self._pool = pool
        self._buffer: Buffer | None = buffer

    @property
    def buffer(self) -> Buffer:
        """The leased buffer (an error once released or taken)."""
        if self._buffer is None:
            raise RuntimeError("this lease was released")
        return self._buffer

    @property
    def array(self) -> np.ndarray:
        """The leased buffer as a flat float32 array."""
        return self.buffer.array

    @property
    def held(self) -> bool:
        """Whether the buffer is still leased."""
        return self._buffer is not None

    def take(self) -> Lease:
        """Hand the buffer on: a new lease owns it and this one releases nothing."""
        lease = Lease(self._pool, self.buffer)
        self._buffer = None
        return lease

    def detach(self) -> Buffer:
        """Take the buffer out of the lease for good (the center store keeps it)."""
        buffer = self.buffer
        self._buffer = None
        return buffer

    def release(self) -> None:
        """Give the buffer back to its pool (no-op if already released or taken)."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            self._pool.give_back(buffer)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


Waiter = Callable[[Lease], None]


class BufferPool:
    """At most ``limit`` buffers of ``size`` float32 elements, reused; waiters queue in order.

    Args:
        size: elements per buffer.
        limit: buffers that may exist at once.
        schedule: how a waiter is called when a buffer frees up; the server passes
            ``loop.call_soon``, so a release never runs another connection's handler inside
            the releasing one (the buffer is reserved for the waiter at once).
    """

    def __init__(self, size: int, limit: int, schedule: Schedule = _run_now) -> None:
        if limit < 1:
            raise ValueError("a buffer pool needs a limit of at least 1")
        self.size = size
        self.limit = limit
        self.created = 0
        self._schedule = schedule
        self._free: list[Buffer] = []
        self._waiters: deque[Waiter] = deque()

    @property
    def in_use(self) -> int:
        """Buffers leased (or kept by the center store) and not yet given back."""
        return self.created - len(self._free)

    @property
    def waiting(self) -> int:
        """Waiters queued for a buffer."""
        return len(self._waiters)

    def adopt(self, array: np.ndarray) -> Lease:
        """Count an existing flat float32 array as one of the pool's buffers (no copy)."""
        if array.dtype != FLAT_DTYPE or array.shape != (self.size,) or not array.flags.c_contiguous:
            raise ValueError("only a contiguous float32 vector of the pool's size can be adopted")
        if self.created >= self.limit:
            raise ValueError("the pool is full")
        self.created += 1
        return Lease(self, Buffer(self.size, array))

    def acquire(self) -> Lease | None:
        """A lease on a free buffer, or ``None`` if ``limit`` buffers are in use."""
        if self._free:
            return Lease(self, self._free.pop())
        if self.created < self.limit:
            self.created += 1
            return Lease(self, Buffer(self.size))
        return None

    def wait(self, waiter: Waiter) -> None:
        """Call ``waiter(lease)`` as soon as a buffer is released (first come, first served).

        The waiter owns the lease it is given, and must release it even if it no longer
        needs it.
        """
        self._waiters.append(waiter)

    def cancel(self, waiter: Waiter) -> None:
        """Withdraw a waiter (its connection closed)."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def give_back(self, buffer: Buffer) -> None:
        """Return a buffer (through :meth:`Lease.release`); the oldest waiter gets it."""
        if self._waiters:
            waiter = self._waiters.popleft()
            lease = Lease(self, buffer)
            self._schedule(lambda: waiter(lease))
        else:
            self._free.append(buffer)


class CenterStore:
    """The published center, and the spare buffers the next center is computed into.

    Args:
        initial: the initial flat center; it becomes the first center buffer (not copied),
            so the caller must not keep using it.
        limit: center buffers that may exist at once: the current one, one being computed,
            and older versions still being sent. At least 2; with 2, an update that finds
            the old version still in flight waits until that send drains.
        schedule: passed to the pool (see :class:`BufferPool`).
    """

    def __init__(self, initial: np.ndarray, limit: int = 2, schedule: Schedule = _run_now) -> None:
        if limit < 2:
            raise ValueError("the center needs at least 2 buffers (current and next)")
        self._pool = BufferPool(initial.size, limit, schedule)
        self.current = self._pool.adopt(initial).detach()

    @property
    def array(self) -> np.ndarray:
        """The current center (do not keep: the next update publishes another buffer)."""
        return self.current.array

    @property
    def buffers(self) -> int:
        """How many center buffers exist (for the memory statistics)."""
        return self._pool.created

    @property
    def in_use(self) -> int:
        """Center buffers in use: the current one, spares being computed, pending sends."""
        return self._pool.in_use

    def spare(self) -> Lease | None:
        """A lease on a buffer to compute the next center into; ``None``: wait (see ``wait``)."""
        return self._pool.acquire()

    def publish(self, lease: Lease) -> None:
        """Make the leased buffer the current center; retire the old one."""
        old, self.current = self.current, lease.detach()
        if old.holds == 0:
            self._pool.give_back(old)

    def wait(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once a center buffer is free again."""

        def on_free(lease: Lease) -> None:
            lease.release()  # back in the pool, where spare() finds it
            callback()

        self._pool.wait(on_free)

    def hold(self, buffer: Buffer) -> None:
        """A send that reads ``buffer`` is pending."""
        buffer.holds += 1

    def unhold(self, buffer: Buffer) -> None:
        """A pending send of ``buffer`` drained; retire the buffer if it is no longer current."""
        buffer.holds -= 1
        if buffer.holds == 0 and buffer is not self.current:
            self._pool.give_back(buffer)
