"""All the option groups of one run, as one value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distkeras_async.options.declare import bind
from distkeras_async.options.groups import (
    GROUPS,
    CheckpointOptions,
    DataOptions,
    DeviceOptions,
    FailureOptions,
    RunOptions,
    ServerOptions,
    Timeouts,
)


@dataclass(frozen=True)
class Options:
    """Every option of a run, in its groups (each validated when it was made)."""

    run: RunOptions = field(default_factory=RunOptions)
    server: ServerOptions = field(default_factory=ServerOptions)
    timeouts: Timeouts = field(default_factory=Timeouts)
    data: DataOptions = field(default_factory=DataOptions)
    failures: FailureOptions = field(default_factory=FailureOptions)
    checkpoints: CheckpointOptions = field(default_factory=CheckpointOptions)
    devices: DeviceOptions = field(default_factory=DeviceOptions)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> tuple[Options, dict[str, Any]]:
        """The options among flat keyword arguments, and the keywords that are not options.

        Raises:
            ValueError or TypeError: from an option's check, naming it.
        """
        groups, rest = bind(keywords, GROUPS)
        return cls(*(groups[group] for group in GROUPS)), rest
