"""One parameter server or a sharded one, from the same arguments.

Trainers, the estimator and ``distkeras-async serve`` build their server here: ``shards=1``
is the simple, in-process :class:`ParameterServer`; more shards start a
:class:`ShardedParameterServer`; ``None`` picks the count from the model's size and the
driver's cores (:func:`~distkeras_async.shards.default_shards`).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async import checks
from distkeras_async.layout import Layout
from distkeras_async.options import TlsSetting
from distkeras_async.options.values import tls_for_shards, tls_setting
from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.server.running import RunningServer
from distkeras_async.server.shard_handle import UnshippableAlgorithmError
from distkeras_async.server.sharded import ShardedParameterServer
from distkeras_async.shards import default_shards

# Both servers are RunningServers: mypy checks it here, where both are made.
_SERVERS: tuple[type[RunningServer], ...] = (ParameterServer, ShardedParameterServer)


def shard_count(shards: int | None, weights: Sequence[np.ndarray]) -> int:
    """``shards``, or the default for these weights on this machine when None."""
    if shards is None:
        return default_shards(Layout.of(weights).size, os.cpu_count() or 1)
    return checks.positive_int(shards, "shards")


def make_server(
    weights: Sequence[np.ndarray],
    algorithm: Any,
    *,
    shards: int | None,
    ssl_context: TlsSetting = None,
    **options: Any,
) -> RunningServer:
    """A parameter server for ``weights``: one process, or ``shards`` shard processes.

    Both kinds read alike (:class:`~distkeras_async.server.running.RunningServer`); use
    :class:`ParameterServer` or :class:`ShardedParameterServer` directly for what only one
    has (a single server's ``port``, a sharded one's ``shard_stats()``).

    Args:
        weights: the initial weights.
        algorithm: a registered name, an Algorithm class or instance.
        shards: shard processes; None: :func:`shard_count`'s default, or one shard when
            ``ssl_context`` is an ``SSLContext`` or the algorithm's class cannot be
            imported by another process (both work with one shard, and an explicit count
            above one refuses them with the fix).
        ssl_context: see :data:`~distkeras_async.options.TlsSetting`.
        **options: every other :class:`ParameterServer` argument: the ``timeouts``,
            ``checkpoints`` and ``capacity`` groups (or their options flat), the algorithm's
            hyperparameters, ...; both servers sort them the same way.

    Raises:
        TypeError: for a TLS setting that is neither a context, a pair of paths nor None.
        ValueError: for an ``ssl.SSLContext`` with more than one shard (another process
            cannot share it: give the certificate and key files instead).
    """
    count = shard_count(shards, weights)
    ssl_context = tls_setting(ssl_context, "ssl_context")
    if shards is None and isinstance(ssl_context, ssl.SSLContext):
        count = 1  # the default never turns a working setting into an error
    tls_for_shards(ssl_context, count)
    if count == 1:
        if isinstance(ssl_context, tuple):
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*ssl_context)
            ssl_context = context
        return ParameterServer(weights, algorithm, ssl_context=ssl_context, **options)
    tls_files = ssl_context if isinstance(ssl_context, tuple) else None
    try:
        return ShardedParameterServer(
            weights, algorithm, shards=count, tls_files=tls_files, **options
        )
    except UnshippableAlgorithmError:
        if shards is not None:
            raise
    # The default count, for an algorithm class only this process can import: one shard.
    return make_server(weights, algorithm, shards=1, ssl_context=ssl_context, **options)
