"""A worker's connection to a sharded parameter server: one client per shard, used at once.

It is a :class:`~distkeras_async.algorithm.ServerHandle` like
:class:`~distkeras_async.worker.client.ParameterServerClient`: a rule commits and pulls the
whole flat vector, and this client cuts it into the shards' slices
(:func:`~distkeras_async.shards.split`), sends every slice before it waits for the
first reply (so the shard processes work at the same time), and receives each shard's
reply straight into its slice of one output vector: no copy, no reassembly step.

Each shard checks the connection itself (the secret, TLS, the sequence numbers), so every
guarantee of a single server holds per shard. Step records travel to the first shard only
(the driver reads them there); metrics, epoch ends and progress go to every shard.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from distkeras_async.algorithm import State
from distkeras_async.errors import LayoutMismatchError, RemoteProtocolError
from distkeras_async.layout import FLAT_DTYPE, Layout
from distkeras_async.shards import split
from distkeras_async.wire.messages import Control
from distkeras_async.worker.client import _FROM_THE_CONNECTION, ParameterServerClient
from distkeras_async.worker.welcome import WelcomeSettings


class ShardedClient(WelcomeSettings):
    """A worker's connections to every shard of a sharded parameter server.

    Like :class:`ParameterServerClient`, it is a
    :class:`~distkeras_async.worker.protocols.Connection`.

    Args:
        host: the server's address.
        ports: each shard's port, in shard order.
        secret: this run's secret.
        worker_id: this worker's id.
        attempt: the Spark task attempt number.
        layout: the worker's model layout (the shards hold slices of its flat vector).
        timeout, connect_timeout, ssl_context, server_hostname: as for
            :class:`ParameterServerClient`, per shard.

    Raises:
        LayoutMismatchError: if the shards do not hold ``layout``'s slices.
        RemoteProtocolError: if the ports are not the shards of one center, in order.
    """

    def __init__(
        self,
        host: str,
        ports: Sequence[int],
        secret: bytes,
        worker_id: int,
        attempt: int = 0,
        *,
        layout: Layout,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.attempt = attempt
        self.layout = layout
        self.shards = split(layout, len(ports))
        self.clients: list[ParameterServerClient] = []
        self._out: np.ndarray | None = None
        try:
            for shard, port in zip(self.shards, ports, strict=True):
                client = ParameterServerClient(
                    host,
                    port,
                    secret,
                    worker_id,
                    attempt,
                    timeout=timeout,
                    connect_timeout=connect_timeout,
                    ssl_context=ssl_context,
                    server_hostname=server_hostname,
                )
                self.clients.append(client)
                if client.shard != (shard.index, shard.count):
                    raise RemoteProtocolError(
                        f"port {port} serves shard {client.shard} of a center, but it was "
                        f"given as shard {shard.index} of {shard.count}"
                    )
                if client.layout != shard.layout:
                    raise LayoutMismatchError(
                        f"worker {worker_id}'s model has {layout.size} parameters; shard "
                        f"{shard.index} holds {client.layout.size} where this model's "
                        f"slice has {shard.size}: pass the same model and custom_objects"
                    )
        except BaseException:
            for client in self.clients:
                client.close()
            raise
        # The run's settings, as every shard has them (WelcomeSettings reads them). The
        # welcome's layout, version and progress are the first shard's alone: this client
        # has its own (the whole layout, the smallest version and progress of all shards).
        self.welcome = self.clients[0].welcome
        # A retried task resumes after the steps every shard applied.
        self.progress = min(c.progress for c in self.clients)
        # A rule's state does not travel to a sharded server (each shard would need the whole
        # model's state, and the shards' progress may differ): a retried attempt starts its
        # rule's state afresh (docs/reliability.md).
        self.state_source: Callable[[], State] | None = None
        self.restored_state: tuple[np.ndarray, ...] | None = None

    # -- what the worker reads ---------------------------------------------------------

    @property
    def carries_state(self) -> bool:
        """No: see ``state_source``."""
        return False

    @property
    def num_params(self) -> int:
        """Number of float32 parameters in the flat vector."""
        return self.layout.size

    @property
    def version(self) -> int:
        """The smallest version among the shards' latest replies."""
        return min(c.version for c in self.clients)

    @property
    def versions(self) -> tuple[int, ...]:
        """Each shard's version in its latest reply, in shard order."""
        return tuple(c.version for c in self.clients)

    @property
    def bases(self) -> tuple[int, ...] | None:
        """Each shard's ``base`` for the next commit (see ``ParameterServerClient.base``)."""
        first = self.clients[0].base
        return None if first is None else tuple(c.base or 0 for c in self.clients)

    @bases.setter
    def bases(self, value: tuple[int, ...] | None) -> None:
        for index, client in enumerate(self.clients):
            client.base = None if value is None else value[index]

    @property
    def control(self) -> Control:
        """The driver's requests, from the first shard's latest reply (all carry them)."""
        return self.clients[0].control

    @property
    def duplicates(self) -> int:
        """Replies recognised as answers to resent requests, over all shards."""
        return sum(c.duplicates for c in self.clients)

    @property
    def steps(self) -> int | None:
        """Local steps so far, sent with the next commit (to every shard)."""
        return self.clients[0].steps

    @steps.setter
    def steps(self, value: int | None) -> None:
        for client in self.clients:
            client.steps = value

    @property
    def history(self) -> list[tuple[int, float, Mapping[str, float]]]:
        """Step records for the next commit (they travel to the first shard)."""
        return self.clients[0].history

    @history.setter
    def history(self, value: list[tuple[int, float, Mapping[str, float]]]) -> None:
        self.clients[0].history = value

    # -- requests ----------------------------------------------------------------------

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        """Fetch the whole center (received into ``out`` if given)."""
        for client in self.clients:
            client.send_pull()
        return self._receive_centers(out)

    def commit(self, update: np.ndarray) -> None:
        """Send each shard its slice of ``update`` and wait until every shard accepted it."""
        self._send_commits(update, pull=False)
        for client in self.clients:
            client.receive_ack()

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Commit to every shard and receive the whole center after it, in one round trip."""
        self._send_commits(update, pull=True)
        return self._receive_centers(out)

    def report(
        self,
        metrics: Mapping[str, float],
        history: Sequence[tuple[int, float, Mapping[str, float]]] = (),
        *,
        epoch: int | None = None,
    ) -> None:
        """Report to every shard (each tracks epoch ends); step records to the first only."""
        for index, client in enumerate(self.clients):
            client.send_report(metrics, history if index == 0 else (), epoch=epoch)
        for client in self.clients:
            client.receive_report_ack()

    def report_error(self, message: str) -> None:
        """Tell every shard this worker failed, and close."""
        for client in self.clients:
            client.report_error(message)

    def close(self) -> None:
        """Say goodbye to every shard and close. Idempotent."""
        for client in self.clients:
            client.close()

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None and not isinstance(exc, _FROM_THE_CONNECTION):
            self.report_error(f"{type(exc).__name__}: {exc}")
        elif exc is not None:
            # One shard's connection failed: the others hear of it as this worker's
            # failure (a synchronous round there must not wait for it).
            for client in self.clients:
                with contextlib.suppress(Exception):
                    client.report_error(f"{type(exc).__name__}: {exc}")
        else:
            self.close()

    # -- plumbing ----------------------------------------------------------------------

    def _send_commits(self, update: np.ndarray, *, pull: bool) -> None:
        if not isinstance(update, np.ndarray) or update.dtype != FLAT_DTYPE:
            raise TypeError("an update must be a float32 numpy array")
        if update.shape != (self.layout.size,):
            raise ValueError(
                f"an update must be a flat vector of {self.layout.size} elements, "
                f"got shape {update.shape}"
            )
        update = np.ascontiguousarray(update)
        for shard, client in zip(self.shards, self.clients, strict=True):
            client.send_commit(update[shard.start : shard.stop], pull=pull)

    def _receive_centers(self, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            out = np.empty(self.layout.size, FLAT_DTYPE)
        elif (
            out.dtype != FLAT_DTYPE
            or out.shape != (self.layout.size,)
            or not out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a contiguous float32 vector of {self.layout.size} elements"
            )
        for shard, client in zip(self.shards, self.clients, strict=True):
            client.receive_center(out[shard.start : shard.stop])
        return out
