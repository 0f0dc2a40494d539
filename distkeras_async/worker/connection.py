"""A worker's connection to the parameter server: one server or K shards, TLS, overlap."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

from distkeras_async.errors import LayoutMismatchError
from distkeras_async.layout import Layout
from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.overlap import OverlappedClient
from distkeras_async.worker.plan import WorkerPlan
from distkeras_async.worker.protocols import Connection, ExchangeClient
from distkeras_async.worker.sharded_client import ShardedClient

# The three clients meet here: mypy checks that each provides what the worker's code reads
# (a member one of them dropped fails the type check here, not a run on a cluster).
_CONNECTIONS: tuple[type[Connection], ...] = (ParameterServerClient, ShardedClient)
_EXCHANGE_CLIENTS: tuple[type[ExchangeClient], ...] = (*_CONNECTIONS, OverlappedClient)


@contextlib.contextmanager
def connect(
    plan: WorkerPlan, worker_id: int, attempt: int, layout: Layout
) -> Iterator[ExchangeClient]:
    """The connection a worker's loop uses (in the background with the plan's ``overlap``).

    Raises:
        LayoutMismatchError: if the server (or a shard) holds another layout than ``layout``,
            the worker's rebuilt model's.
    """
    with _open(plan, worker_id, attempt, layout) as client:
        if not plan.devices.overlap:
            yield client
            return
        # Leaving it waits for the exchange in flight, before the client says goodbye.
        with OverlappedClient(client) as overlapped:
            yield overlapped


@contextlib.contextmanager
def _open(plan: WorkerPlan, worker_id: int, attempt: int, layout: Layout) -> Iterator[Connection]:
    end = plan.endpoint
    tls = None if end.tls_ca is None else ssl.create_default_context(cadata=end.tls_ca)
    if len(end.ports) > 1:
        # The shards check that they hold this layout's slices (LayoutMismatchError).
        with ShardedClient(
            end.host,
            end.ports,
            end.secret,
            worker_id,
            attempt,
            layout=layout,
            timeout=end.timeout,
            ssl_context=tls,
            server_hostname=end.tls_server_hostname,
        ) as sharded:
            yield sharded
        return
    with ParameterServerClient(
        end.host,
        end.port,
        end.secret,
        worker_id,
        attempt,
        timeout=end.timeout,
        ssl_context=tls,
        server_hostname=end.tls_server_hostname,
    ) as client:
        if client.layout != layout:
            raise LayoutMismatchError(
                f"worker {worker_id} rebuilt a model with {layout.size} parameters in "
                f"{len(layout.specs)} tensors, but the server holds {client.layout.size} in "
                f"{len(client.layout.specs)}: pass the same custom_objects everywhere"
            )
        yield client
