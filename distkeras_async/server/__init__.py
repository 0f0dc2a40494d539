"""The parameter server: transport, per-connection sessions, the shared core and its buffers."""

from distkeras_async.server.parameter_server import ParameterServer

__all__ = ["ParameterServer"]
