"""Leases, pools and the center store: every model-sized buffer has exactly one owner."""

from __future__ import annotations

import numpy as np
import pytest

from distkeras_async.server.buffers import BufferPool, CenterStore, Lease

SIZE = 4


def test_a_lease_releases_once_and_hands_on():
    pool = BufferPool(SIZE, 2)
    lease = pool.acquire()
    assert lease is not None and pool.in_use == 1
    moved = lease.take()
    assert not lease.held and moved.held
    lease.release()  # taken: releases nothing
    assert pool.in_use == 1
    moved.release()
    moved.release()  # idempotent
    assert pool.in_use == 0
    with pytest.raises(RuntimeError, match="released"):
        _ = moved.buffer


def test_with_releases_on_every_path():
    pool = BufferPool(SIZE, 1)
    lease = pool.acquire()
    assert lease is not None
    with pytest.raises(ValueError, match="inside"), lease:
        assert pool.in_use == 1
        raise ValueError("inside")
    assert pool.in_use == 0 and lease is not None and not lease.held


def test_the_pool_is_bounded_and_serves_waiters_in_order_through_the_scheduler():
    scheduled: list = []
    pool = BufferPool(SIZE, 1, schedule=scheduled.append)
    first = pool.acquire()
    assert first is not None and pool.acquire() is None
    got: list[tuple[str, Lease]] = []
    pool.wait(lambda lease: got.append(("a", lease)))
    pool.wait(lambda lease: got.append(("b", lease)))
    first.release()
    assert got == [] and len(scheduled) == 1  # reserved for "a", called on the next turn
    assert pool.acquire() is None  # the buffer is a's, not free
    scheduled.pop()()
    assert [name for name, _ in got] == ["a"]
    got[0][1].release()
    scheduled.pop()()
    assert [name for name, _ in got] == ["a", "b"]
    got[1][1].release()
    assert pool.in_use == 0 and pool.created == 1


def test_a_cancelled_waiter_gets_nothing():
    pool = BufferPool(SIZE, 1)
    lease = pool.acquire()
    calls: list[Lease] = []
    pool.wait(calls.append)
    pool.cancel(calls.append)
    assert lease is not None
    lease.release()
    assert calls == [] and pool.in_use == 0


def test_adopt_counts_an_existing_array_without_copying():
    pool = BufferPool(SIZE, 1)
    array = np.zeros(SIZE, np.float32)
    lease = pool.adopt(array)
    assert lease.array is array and pool.in_use == 1
    with pytest.raises(ValueError, match="full"):
        pool.adopt(np.zeros(SIZE, np.float32))
    with pytest.raises(ValueError, match="contiguous float32"):
        BufferPool(SIZE, 2).adopt(np.zeros(SIZE, np.float64))


def test_the_center_is_published_whole_and_old_versions_retire_when_their_sends_drain():
    initial = np.zeros(SIZE, np.float32)
    store = CenterStore(initial, limit=3)
    first = store.current
    assert store.array is initial and store.in_use == 1
    store.hold(first)  # a send of version 0 is pending
    spare = store.spare()
    assert spare is not None
    np.add(store.array, 1.0, out=spare.array)
    assert not store.array.any()  # nothing visible before publish
    store.publish(spare)
    assert not spare.held and store.array[0] == 1.0
    assert store.in_use == 2  # version 0 is still being sent
    store.unhold(first)
    assert store.in_use == 1  # retired once drained
    dropped = store.spare()
    assert dropped is not None
    dropped.release()  # a computation that failed: the current center is untouched
    assert store.in_use == 1 and store.array[0] == 1.0


def test_the_center_waits_when_every_buffer_is_busy():
    store = CenterStore(np.zeros(SIZE, np.float32), limit=2)
    first = store.current
    store.hold(first)  # version 0 is being sent
    spare = store.spare()
    assert spare is not None
    store.publish(spare)
    store.hold(store.current)  # and version 1 too
    assert store.spare() is None
    woke: list[bool] = []
    store.wait(lambda: woke.append(True))
    store.unhold(first)  # version 0's send drained: its buffer frees up, the waiter runs
    assert woke == [True]
    assert store.spare() is not None


def test_the_center_needs_two_buffers():
    with pytest.raises(ValueError, match="at least 2"):
        CenterStore(np.zeros(SIZE, np.float32), limit=1)
