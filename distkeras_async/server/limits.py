"""The resource limits of one parameter server: what a caller asks for, and what it gets.

:class:`Capacity` is declared like the run's option groups (:mod:`distkeras_async.options`)
so the servers take it as a group or as flat keyword arguments, and list it in their
signatures; :class:`Limits` is what one server enforces once the defaults that depend on
the worker count and the algorithm are settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distkeras_async import checks
from distkeras_async.options import Timeouts, option, validate


def _center_buffers(value: Any, name: str) -> int:
    # Two at least: the published center and the next one being computed (a rule never
    # writes the published center).
    return checks.positive_int(value, name, minimum=2)


def _optional_count(value: Any, name: str) -> int | None:
    return checks.optional_positive_int(value, name)


@dataclass(frozen=True)
class Capacity:
    """How many connections and model-sized buffers one server may hold."""

    max_connections: int | None = option(
        None,
        "open connections allowed at once (default: 2 * num_workers + 8)",
        _optional_count,
    )
    receive_buffers: int | None = option(
        None,
        "model-sized buffers for incoming commits (default: 1 for asynchronous algorithms, "
        "num_workers for synchronous ones, which hold a whole round)",
        _optional_count,
    )
    center_buffers: int = option(
        3,
        "model-sized buffers for the center: the published one, the next one being "
        "computed, and one older version still being sent to a slow reader (at least 2; "
        "with 2, an update waits while an older version is still being sent)",
        _center_buffers,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one server (see :class:`~distkeras_async.server.ParameterServer`).

    Attributes:
        timeouts: how long each wait may last (round, idle, frame, handshake, send).
        max_connections: open connections allowed at once.
        receive_buffers: model-sized buffers for incoming commits.
        center_buffers: model-sized buffers for the center and its next version.
    """

    timeouts: Timeouts
    max_connections: int
    receive_buffers: int
    center_buffers: int

    @classmethod
    def settle(
        cls, timeouts: Timeouts, capacity: Capacity, num_workers: int, synchronous: bool
    ) -> Limits:
        """The limits of a server of ``num_workers`` workers, defaults filled in.

        Raises:
            ValueError: when a synchronous algorithm gets fewer receive buffers than workers
                (a round holds one commit of every worker).
        """
        limits = cls(
            timeouts=timeouts,
            max_connections=capacity.max_connections or 2 * num_workers + 8,
            receive_buffers=capacity.receive_buffers or (num_workers if synchronous else 1),
            center_buffers=capacity.center_buffers,
        )
        if synchronous and limits.receive_buffers < num_workers:
            raise ValueError("a synchronous algorithm needs receive_buffers >= num_workers")
        return limits
