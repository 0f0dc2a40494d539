"""Model-sized buffers for the server: a bounded pool, and the copy-on-write center.

The server never allocates a model-sized buffer per message: commits are received into
buffers taken from a :class:`BufferPool`, and the center lives in a :class:`CenterStore`.
Both are bounded, which is what keeps the server's memory at a few times the model's size
however many workers connect; a connection that finds no free buffer waits (its reading is
paused and its bytes stay in the kernel) until one is released.

The center is sent to workers straight from its own memory. When a reply could not be
written at once, the transport still holds a view of the center, so the next update must not
change those bytes: :meth:`CenterStore.writable` then moves the center to another buffer
(copy on write) and the old one returns to the pool when every such send has drained.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

import numpy as np

from distkeras_async.layout import FLAT_DTYPE


class Buffer:
    """One flat float32 buffer, with a count of pending sends that still read from it."""

    __slots__ = ("array", "holds", "view")

    def __init__(self, size: int, array: np.ndarray | None = None) -> None:
        self.array = np.empty(size, FLAT_DTYPE) if array is None else array
        self.view = self.array.data.cast("B")
        self.holds = 0


Waiter = Callable[[Buffer], None]


class BufferPool:
    """At most ``limit`` buffers of ``size`` float32 elements, reused; waiters queue in order."""

    def __init__(self, size: int, limit: int) -> None:
        if limit < 1:
            raise ValueError("a buffer pool needs a limit of at least 1")
        self.size = size
        self.limit = limit
        self.created = 0
        self._free: list[Buffer] = []
        self._waiters: deque[Waiter] = deque()

    @property
    def in_use(self) -> int:
        """Buffers handed out and not yet released."""
        return self.created - len(self._free)

    def adopt(self, array: np.ndarray) -> Buffer:
        """Count an existing flat float32 array as one of the pool's buffers (no copy)."""
        if array.dtype != FLAT_DTYPE or array.shape != (self.size,) or not array.flags.c_contiguous:
            raise ValueError("only a contiguous float32 vector of the pool's size can be adopted")
        self.created += 1
        return Buffer(self.size, array)

    def acquire(self) -> Buffer | None:
        """A free buffer, or ``None`` if ``limit`` buffers are in use."""
        if self._free:
            return self._free.pop()
        if self.created < self.limit:
            self.created += 1
            return Buffer(self.size)
        return None

    def wait(self, waiter: Waiter) -> None:
        """Call ``waiter(buffer)`` as soon as a buffer is released (first come, first served)."""
        self._waiters.append(waiter)

    def cancel(self, waiter: Waiter) -> None:
        """Withdraw a waiter (its connection closed)."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self, buffer: Buffer) -> None:
        """Return a buffer; the oldest waiter, if any, gets it at once."""
        if self._waiters:
            self._waiters.popleft()(buffer)
        else:
            self._free.append(buffer)


class CenterStore:
    """The center variable as one flat float32 buffer, copied on write while sends read it.

    Args:
        initial: the initial flat center; it becomes the first center buffer (not copied),
            so the caller must not keep using it.
        limit: how many center buffers may exist at once (the current one plus older versions
            still being sent). With the default of 2, a second update while an old version is
            still in flight waits until that send drains.
    """

    def __init__(self, initial: np.ndarray, limit: int = 2) -> None:
        self._pool = BufferPool(initial.size, limit)
        self.current = self._pool.adopt(initial)

    @property
    def array(self) -> np.ndarray:
        """The current center (do not keep: it may move to another buffer on the next update)."""
        return self.current.array

    @property
    def buffers(self) -> int:
        """How many center buffers exist (for the memory statistics)."""
        return self._pool.created

    def writable(self) -> np.ndarray | None:
        """The center, safe to modify in place now; ``None`` if that must wait (see ``wait``)."""
        old = self.current
        if old.holds == 0:
            return old.array
        new = self._pool.acquire()
        if new is None:
            return None
        np.copyto(new.array, old.array)
        self.current = new
        return new.array

    def wait(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once a center buffer is free again."""

        def on_free(buffer: Buffer) -> None:
            self._pool.release(buffer)  # back in the pool, so writable() finds it
            callback()

        self._pool.wait(on_free)

    def hold(self, buffer: Buffer) -> None:
        """A send that reads ``buffer`` is pending."""
        buffer.holds += 1

    def unhold(self, buffer: Buffer) -> None:
        """A pending send of ``buffer`` drained; retire the buffer if it is no longer current."""
        buffer.holds -= 1
        if buffer.holds == 0 and buffer is not self.current:
            self._pool.release(buffer)
