"""The model's weight layout: a list of per-layer arrays <-> one flat float32 vector.

Every rule, the server's center and every message works on one flat contiguous float32
vector, so an update is one buffer on the wire and one vectorized numpy operation on the
server. The layout remembers each tensor's shape and dtype to rebuild Keras' weight list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distkeras_async.wire.schema import DTYPES, TensorSpec

FLAT_DTYPE = np.dtype(np.float32)


@dataclass(frozen=True, slots=True)
class Layout:
    """Shapes and dtypes of a model's weight tensors, in ``get_weights()`` order."""

    specs: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, weights: Sequence[np.ndarray]) -> Layout:
        """The layout of a weight list such as ``keras_model.get_weights()`` returns."""
        specs = []
        for index, w in enumerate(weights):
            array = np.asarray(w)
            if array.dtype.kind != "f":
                raise TypeError(
                    f"weight {index} has dtype {array.dtype}; only floating-point weights "
                    "can be trained through the parameter server"
                )
            specs.append(TensorSpec("float" + str(8 * array.dtype.itemsize), array.shape))
        return cls(tuple(specs))

    @classmethod
    def from_wire(cls, items: Sequence[Any]) -> Layout:
        """The layout from its ``[[dtype, shape], ...]`` wire form (already validated)."""
        return cls(tuple(TensorSpec(str(d), tuple(int(x) for x in s)) for d, s in items))

    def to_wire(self) -> list[Any]:
        """The ``[[dtype, shape], ...]`` wire form."""
        return [spec.to_wire() for spec in self.specs]

    @property
    def size(self) -> int:
        """Total number of parameters."""
        return sum(spec.size for spec in self.specs)

    @property
    def nbytes(self) -> int:
        """Size in bytes of the flat float32 vector."""
        return self.size * FLAT_DTYPE.itemsize

    def flat_spec(self) -> TensorSpec:
        """The spec of the flat vector that travels in commits and center replies."""
        return TensorSpec("float32", (self.size,))

    def flatten(self, weights: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate ``weights`` into one flat float32 vector (into ``out`` if given)."""
        if len(weights) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} weight tensors, got {len(weights)}")
        flat = np.empty(self.size, FLAT_DTYPE) if out is None else out
        if flat.shape != (self.size,) or flat.dtype != FLAT_DTYPE:
            raise ValueError(f"out must be a float32 vector of {self.size} elements")
        for view, w, spec in zip(self.views(flat), weights, self.specs, strict=True):
            array = np.asarray(w)
            if array.shape != spec.shape:
                raise ValueError(f"weight shape {array.shape} does not match layout {spec.shape}")
            view[...] = array
        return flat

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Per-tensor views (no copy) into a flat float32 vector."""
        out = []
        offset = 0
        for spec in self.specs:
            out.append(flat[offset : offset + spec.size].reshape(spec.shape))
            offset += spec.size
        return out

    def unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
        """New arrays, one per tensor, in each tensor's original dtype."""
        return [
            np.array(view, dtype=DTYPES[spec.dtype])
            for view, spec in zip(self.views(flat), self.specs, strict=True)
        ]
