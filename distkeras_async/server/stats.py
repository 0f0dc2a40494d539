"""Statistics the parameter server keeps, for progress bars, histories and benchmarks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(slots=True)
class WorkerStats:
    """What the server knows about one worker.

    Attributes:
        worker: the worker id.
        attempt: the latest Spark task attempt seen.
        commits: commits applied (duplicates excluded).
        duplicates: commits recognised as resent and not applied again.
        pulls: centers sent (pull and commit_pull).
        bytes_in: bytes received from this worker.
        staleness_last: staleness of its latest commit.
        staleness_max: largest staleness of its commits.
        staleness_total: sum of its commits' staleness (mean = total / commits).
        last_metrics: the metrics of its latest report.
        reports: number of reports.
        last_seen: ``time.time()`` of its latest message.
        finished: whether it said goodbye.
        connected: whether a connection of this worker is open now.
        epochs: the logs of each pass over its partition it finished, by epoch (from 1).
        disconnected_at: ``time.time()`` when its last connection closed (0.0 while open).
    """

    worker: int
    attempt: int = 0
    commits: int = 0
    duplicates: int = 0
    pulls: int = 0
    bytes_in: int = 0
    staleness_last: int = 0
    staleness_max: int = 0
    staleness_total: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    reports: int = 0
    last_seen: float = 0.0
    finished: bool = False
    connected: bool = False
    disconnected_at: float = 0.0
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def last_loss(self) -> float | None:
        """The loss of the latest report, if any."""
        return self.last_metrics.get("loss")


@dataclass(slots=True)
class ServerStats:
    """A snapshot of the server's counters.

    Attributes:
        version: number of updates applied to the center (a synchronous round counts once).
        commits: commits applied, over all workers.
        rounds: synchronous rounds completed.
        round_waiting: workers whose commit waits in the current synchronous round.
        bytes_in: bytes received.
        bytes_out: bytes sent.
        connections: connections open now.
        connections_total: connections accepted since start.
        rejected: connections closed for a protocol, authentication or limit error.
        center_buffers: model-sized buffers created for the center and its next versions.
        receive_buffers: model-sized buffers created for receiving commits.
        center_buffers_in_use: center buffers in use now: the published center, plus older
            versions still being sent (1 when the server is quiet).
        receive_buffers_in_use: receive buffers held now by commits on their way (0 when the
            server is quiet: no buffer is ever left behind).
        in_place_updates: updates applied in place (a bounded linear rule, proven finite,
            with no send reading the center); the others went through a spare buffer.
        started: ``time.time()`` when the server started.
        workers: per-worker statistics.
    """

    version: int = 0
    commits: int = 0
    rounds: int = 0
    round_waiting: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connections: int = 0
    connections_total: int = 0
    rejected: int = 0
    center_buffers: int = 0
    receive_buffers: int = 0
    center_buffers_in_use: int = 0
    receive_buffers_in_use: int = 0
    in_place_updates: int = 0
    started: float = field(default_factory=time.time)
    workers: dict[int, WorkerStats] = field(default_factory=dict)

    def epoch_complete(self, epoch: int, num_workers: int) -> bool:
        """Whether global ``epoch`` ended: every worker finished its ``epoch``-th pass.

        A worker that finished training without reaching it (an empty partition, one that
        stopped early) does not hold it up; at least one worker must have reached it.
        """
        reached = False
        for worker in range(num_workers):
            w = self.workers.get(worker)
            if w is None:
                return False
            if epoch in w.epochs:
                reached = True
            elif not w.finished:
                return False
        return reached

    def worker(self, worker: int) -> WorkerStats:
        """The statistics of ``worker``, created on first use."""
        stats = self.workers.get(worker)
        if stats is None:
            stats = self.workers[worker] = WorkerStats(worker)
        return stats

    def snapshot(self) -> ServerStats:
        """A deep copy, safe to read from another thread."""
        return replace(
            self,
            workers={
                k: replace(
                    w,
                    last_metrics=dict(w.last_metrics),
                    epochs={e: dict(logs) for e, logs in w.epochs.items()},
                )
                for k, w in self.workers.items()
            },
        )

    def to_plain(self) -> dict[str, Any]:
        """Plain values only (for the shard processes' control channel)."""
        return asdict(self)

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> ServerStats:
        """The statistics :meth:`to_plain` gave."""
        workers = {
            int(k): WorkerStats(
                **{**w, "epochs": {int(e): dict(logs) for e, logs in w["epochs"].items()}}
            )
            for k, w in plain["workers"].items()
        }
        return cls(**{**plain, "workers": workers})

    @classmethod
    def merge(cls, shards: list[ServerStats]) -> ServerStats:
        """One view of the statistics of a sharded server's shards.

        Every logical commit reaches every shard, so counts of commits, rounds and versions
        are the smallest over the shards (what every shard has done); bytes and connections
        add up. A worker is connected or finished only when it is on every shard.
        """
        first = shards[0]
        merged = replace(
            first.snapshot(),
            version=min(s.version for s in shards),
            commits=min(s.commits for s in shards),
            rounds=min(s.rounds for s in shards),
            **{
                name: sum(getattr(s, name) for s in shards)
                for name in (
                    "bytes_in",
                    "bytes_out",
                    "connections",
                    "connections_total",
                    "rejected",
                    "center_buffers",
                    "receive_buffers",
                    "center_buffers_in_use",
                    "receive_buffers_in_use",
                    "in_place_updates",
                )
            },
        )
        for worker, stats in merged.workers.items():
            others = [s.workers.get(worker, WorkerStats(worker)) for s in shards]
            stats.commits = min(o.commits for o in others)
            stats.pulls = min(o.pulls for o in others)
            stats.bytes_in = sum(o.bytes_in for o in others)
            stats.connected = all(o.connected for o in others)
            stats.finished = all(o.finished for o in others)
            stats.staleness_max = max(o.staleness_max for o in others)
            stats.disconnected_at = max(o.disconnected_at for o in others)
        return merged
