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
from typing import Any, TypeAlias

import numpy as np

from distkeras_async import checks
from distkeras_async.layout import Layout
from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.server.shard_handle import UnshippableAlgorithmError
from distkeras_async.server.sharded import ShardedParameterServer
from distkeras_async.shards import default_shards

AnyServer: TypeAlias = ParameterServer | ShardedParameterServer

TlsSetting: TypeAlias = ssl.SSLContext | tuple[str, str] | None
"""A server-side TLS context, or ``(certificate, key)`` PEM paths, or None for plain TCP."""


def shard_count(shards: int | None, weights: Sequence[np.ndarray]) -> int:
    """``shards``, or the default for these weights on this machine when None."""
    if shards is None:
        return default_shards(Layout.of(weights).size, os.cpu_count() or 1)
    return checks.positive_int(shards, "shards")


def check_tls(tls: TlsSetting, shards: int | None) -> None:
    """Refuse a TLS setting that cannot serve ``shards`` shards.

    Raises:
        TypeError: for anything but a context, a pair of paths, or None.
        ValueError: for a context with more than one shard (another process cannot share
            it: give the certificate and key files instead).
    """
    if tls is None or isinstance(tls, ssl.SSLContext):
        if isinstance(tls, ssl.SSLContext) and shards is not None and shards > 1:
            raise ValueError(
                "a sharded parameter server runs each shard in its own process, which cannot "
                "share an ssl.SSLContext: pass ssl_context=(certificate_file, key_file)"
            )
        return
    if not (isinstance(tls, tuple) and len(tls) == 2 and all(isinstance(p, str) for p in tls)):
        raise TypeError(
            f"ssl_context must be an ssl.SSLContext or (certificate_file, key_file), got {tls!r}"
        )


def make_server(
    weights: Sequence[np.ndarray],
    algorithm: Any,
    *,
    shards: int | None,
    ssl_context: TlsSetting = None,
    **options: Any,
) -> AnyServer:
    """A parameter server for ``weights``: one process, or ``shards`` shard processes.

    Args:
        weights: the initial weights.
        algorithm: a registered name, an Algorithm class or instance.
        shards: shard processes; None: :func:`shard_count`'s default, or one shard when
            ``ssl_context`` is an ``SSLContext`` or the algorithm's class cannot be
            imported by another process (both work with one shard, and an explicit count
            above one refuses them with the fix).
        ssl_context: see :data:`TlsSetting`.
        **options: every other :class:`ParameterServer` argument.
    """
    count = shard_count(shards, weights)
    if shards is None and isinstance(ssl_context, ssl.SSLContext):
        count = 1  # the default never turns a working setting into an error
    check_tls(ssl_context, count)
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
