"""The run's settings as the server's welcome gave them, read the same way by both clients."""

from __future__ import annotations

from typing import Any

from distkeras_async.wire.messages import Welcome


class WelcomeSettings:
    """The run's settings, read from the welcome a client keeps (``self.welcome``).

    :class:`~distkeras_async.worker.client.ParameterServerClient` keeps its server's welcome;
    :class:`~distkeras_async.worker.sharded_client.ShardedClient` keeps its first shard's
    (every shard of a center runs the same algorithm with the same settings). Reading the
    message instead of copying its fields leaves one place that says what each setting is.
    """

    welcome: Welcome

    @property
    def algorithm_name(self) -> str:
        """The run's algorithm, by its registered name."""
        return self.welcome.algorithm

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The algorithm's settings (a copy: changing it changes nothing on the server)."""
        return dict(self.welcome.hyperparameters)

    @property
    def num_workers(self) -> int:
        """Workers in the run."""
        return self.welcome.num_workers

    def reply_timeout(self, timeout: float) -> float:
        """Seconds a call may wait for its reply, given the caller's ``timeout``.

        A synchronous commit waits for the whole round: the server says how long that may
        take (its round timeout and a margin, so that its own error arrives first).
        """
        return max(timeout, self.welcome.reply_timeout)

    @property
    def synchronous_rounds(self) -> bool:
        """Whether commits meet in rounds (a synchronous algorithm)."""
        return self.welcome.synchronous

    @property
    def commit_dtype(self) -> str:
        """The dtype commits travel in (the algorithm's ``commit_dtype``)."""
        return str(self.welcome.hyperparameters.get("commit_dtype", "float32"))

    @property
    def pull_dtype(self) -> str:
        """The dtype the center's replies travel in (the algorithm's ``pull_dtype``)."""
        return str(self.welcome.hyperparameters.get("pull_dtype", "float32"))
