"""distkeras-async: data-parallel Keras training on Spark through a fast, safe parameter server.

The core (protocol, server, client, algorithms) imports neither Spark nor TensorFlow.
"""

from importlib import metadata

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm, Hyperparameter, ServerHandle, UpdateMeta
from distkeras_async.errors import (
    AlgorithmError,
    AuthenticationError,
    ConnectionClosedError,
    DistKerasError,
    HyperparameterError,
    LocalProtocolError,
    PluginError,
    ProtocolError,
    RemoteProtocolError,
    RoundFailedError,
    RuleFailedError,
    RunFailedError,
    ServerError,
    UnknownAlgorithmError,
    WorkerReportedError,
)
from distkeras_async.layout import Layout
from distkeras_async.rules import (
    AsyncElasticAlgorithm,
    DeltaAlgorithm,
    ElasticAlgorithm,
    delta_rule,
)
from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.server.sharded import ShardedParameterServer
from distkeras_async.server.stats import ServerStats, WorkerStats
from distkeras_async.wire.auth import new_secret
from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.exchange import (
    HookList,
    LocalModel,
    SessionHooks,
    StepRecord,
    WorkerSession,
    run_worker,
)
from distkeras_async.worker.sharded_client import ShardedClient

try:
    # The version is declared once, in pyproject.toml; the installed metadata carries it.
    __version__ = metadata.version("distkeras-async")
except metadata.PackageNotFoundError:  # a source tree on sys.path without any install
    __version__ = "0+unknown"

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AsyncElasticAlgorithm",
    "AuthenticationError",
    "ConnectionClosedError",
    "DeltaAlgorithm",
    "DistKerasError",
    "ElasticAlgorithm",
    "HookList",
    "Hyperparameter",
    "HyperparameterError",
    "Layout",
    "LocalModel",
    "LocalProtocolError",
    "ParameterServer",
    "ParameterServerClient",
    "PluginError",
    "ProtocolError",
    "RemoteProtocolError",
    "RoundFailedError",
    "RuleFailedError",
    "RunFailedError",
    "ServerError",
    "ServerHandle",
    "ServerStats",
    "SessionHooks",
    "ShardedClient",
    "ShardedParameterServer",
    "StepRecord",
    "UnknownAlgorithmError",
    "UpdateMeta",
    "WorkerReportedError",
    "WorkerSession",
    "WorkerStats",
    "__version__",
    "delta_rule",
    "new_secret",
    "registry",
    "run_worker",
]
