"""The trainer layer's public face, for :mod:`distkeras_async.ml`, of what it builds on below.

The Spark ML stages sit on the driver-side API that the trainers define: they turn Keras
objects into the JSON-able configs a trainer compiles its workers from, and they hand back
the statistics a run's parameter server kept. Both are implemented in the layers below the
trainers (the workers rebuild models from those configs; the server keeps the statistics),
but ``ml/`` does not reach past the trainers into them (the import-linter contract "ml
builds on the trainers, never on the workers or the server beneath them"): it imports them
from here, and there is still one definition of each.
"""

from __future__ import annotations

from distkeras_async.server.stats import ServerStats
from distkeras_async.worker.serialization import serialize_config, serialize_optimizer

__all__ = ["ServerStats", "serialize_config", "serialize_optimizer"]
