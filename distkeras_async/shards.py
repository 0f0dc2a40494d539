"""How a flat center is cut into shards, and how many shards a model gets by default.

A sharded parameter server holds the flat float32 center in K contiguous, balanced slices,
one per server process. A tensor may be cut between two shards: a shard sees its slice as
1-D float32 pieces, one per tensor it overlaps, so a per-tensor codec (int8's scale) scales
each piece on its own. The worker and every shard compute the same cut from the layout and
the count (:func:`split`), and the handshake checks that they agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distkeras_async.layout import Layout
from distkeras_async.wire.schema import TensorSpec

# Below this many parameters a second shard costs more (one more connection and message per
# exchange) than it saves; measured on loopback (docs/scaling.md).
PARAMS_PER_SHARD = 2_000_000

# Shards beyond this gave nothing more at 16 clients on 16 cores (docs/scaling.md).
MAX_DEFAULT_SHARDS = 8


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard of a flat center: ``flat[start:stop]``, seen as ``layout``'s pieces."""

    index: int
    count: int
    start: int
    stop: int
    layout: Layout

    @property
    def size(self) -> int:
        """Parameters in this shard."""
        return self.stop - self.start


def split(layout: Layout, count: int) -> list[Shard]:
    """Cut ``layout``'s flat vector into ``count`` contiguous slices of (nearly) equal size.

    Raises:
        ValueError: if ``count`` is not positive or exceeds the number of parameters.
    """
    size = layout.size
    if count < 1:
        raise ValueError(f"shards must be at least 1, got {count}")
    if count > size:
        raise ValueError(f"{count} shards for {size} parameters: at most one per parameter")
    bounds = [size * i // count for i in range(count + 1)]
    # Where each tensor begins and ends in the flat vector.
    ends = []
    offset = 0
    for spec in layout.specs:
        ends.append((offset, offset + spec.size))
        offset += spec.size
    shards = []
    for index in range(count):
        start, stop = bounds[index], bounds[index + 1]
        pieces = tuple(
            TensorSpec("float32", (min(stop, hi) - max(start, lo),))
            for lo, hi in ends
            if min(stop, hi) > max(start, lo)
        )
        shards.append(Shard(index, count, start, stop, Layout(pieces)))
    return shards


def default_shards(num_params: int, cores: int) -> int:
    """The shard count for a model of ``num_params`` on a driver with ``cores`` cores.

    One shard (the simple, in-process server) below :data:`PARAMS_PER_SHARD` parameters or
    on fewer than 4 cores, where a second process competes with the driver and the local
    workers for the same cores; otherwise one shard per ``PARAMS_PER_SHARD`` parameters,
    at most one per 2 cores and at most :data:`MAX_DEFAULT_SHARDS`.
    """
    if cores < 4 or num_params < 2 * PARAMS_PER_SHARD:
        return 1
    return max(1, min(MAX_DEFAULT_SHARDS, cores // 2, math.ceil(num_params / PARAMS_PER_SHARD)))
