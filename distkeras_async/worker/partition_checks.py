"""A worker's partition checked block by block, before its first step.

The driver checks the DataFrame's first row (:mod:`distkeras_async.trainers.input_checks`);
another partition's rows may differ, so every worker checks each of its rows: a null, a row
of another width than the rows before, NaN or infinity, a row that does not fit the model's
input, a class index out of the output's range. A bad row fails the worker with the column
and the row's position in the partition, before any update reaches the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from distkeras_async.errors import InputDataError
from distkeras_async.worker.inputs import check_finite, input_shapes
from distkeras_async.worker.labels import check_class_indices, sparse_label_classes
from distkeras_async.worker.partition import Partition
from distkeras_async.worker.plan import WorkerPlan
from distkeras_async.worker.serialization import ModelSpec

Decode = Callable[[pa.RecordBatch, int], list[np.ndarray]]
"""A worker's decoding of one block of rows (the block, its first row's position)."""


class PartitionChecks:
    """The checks of one worker's partition (see :meth:`blocks`).

    Args:
        plan: the run's plan (its columns, its model, whether non-finite inputs are allowed).
        worker_id: the worker's id, for messages.
        attempt: its Spark task attempt, for messages.
        decode: the worker's decoding of a block into one array per column.
        model: the worker's model (built on the first call); called once the first block is
            decoded, so an empty partition builds none here.
        check_inputs: check that every row fits the model's inputs (False when the worker
            decodes or prepares the columns its own way).
        check_classes: check the class indices of labels whose loss takes them (False when
            the worker makes the targets its own way).
    """

    def __init__(
        self,
        plan: WorkerPlan,
        worker_id: int,
        attempt: int,
        decode: Decode,
        model: Callable[[], Any],
        *,
        check_inputs: bool = True,
        check_classes: bool = True,
    ) -> None:
        self.plan = plan
        self.worker_id = worker_id
        self.attempt = attempt
        self.decode = decode
        self.model = model
        self.check_inputs = check_inputs
        self.check_classes = check_classes
        self.where = f"worker {worker_id} (attempt {attempt})"

    def blocks(self, partition: Partition) -> Iterator[list[np.ndarray]]:
        """Every block of the partition, decoded and checked, in partition order.

        Raises:
            InputDataError: naming the column and the row's position in the partition, for
                a null, a row of another width than the rows before, (unless the plan
                allows them) NaN or infinity, a row that does not fit the model's input, or
                a class index out of the output's range for a sparse categorical loss.
        """
        data = self.plan.data
        names = partition.columns
        widths: list[tuple[int, ...]] | None = None
        class_counts: list[tuple[int, int]] = []
        values = len(data.features) + len(data.labels)  # the columns after them are weights
        for index, first in enumerate(partition.first_rows()):
            row = int(first)
            try:
                columns = self.decode(partition.block(index), row)
            except ValueError as exc:
                raise InputDataError(f"{self.where}, in its partition: {exc}") from exc
            shapes = [c.shape[1:] for c in columns]
            if widths is None:
                widths = shapes
                self._check_input_sizes(columns, row)
                class_counts = self._sparse_label_classes()
            for name, shape, width in zip(names, shapes, widths, strict=True):
                if shape != width:
                    raise InputDataError(
                        f"{self.where}, in its partition: column {name!r} has rows of shape "
                        f"{shape} from row {row} on, where the rows before have {width}"
                    )
            if not self.plan.failures.allow_nonfinite_inputs:
                check_finite(columns[:values], names[:values], self.worker_id, self.attempt, row)
            if len(columns) > values:  # a weight column never may be non-finite
                check_finite(columns[values:], names[values:], self.worker_id, self.attempt, row)
            for column, classes in class_counts:
                check_class_indices(columns[column], names[column], classes, self.where, row)
            yield columns

    def _sparse_label_classes(self) -> list[tuple[int, int]]:
        """(column index, classes) of each label column whose loss takes class indices."""
        if not self.check_classes:
            return []
        data = self.plan.data
        loss = ModelSpec.from_json(self.plan.model_spec).loss
        return sparse_label_classes(self.model(), loss, len(data.features), len(data.labels))

    def _check_input_sizes(self, columns: Sequence[np.ndarray], first: int) -> None:
        """A partition whose rows do not fit the model's inputs fails before any step."""
        features = self.plan.data.features
        for name, column, size in zip(features, columns, self._input_sizes(), strict=False):
            found = int(np.prod(column.shape[1:]))
            if size is not None and len(column) and found != size:
                raise InputDataError(
                    f"{self.where}, in its partition: column {name!r} has {found} value(s) "
                    f"per row from row {first} on, but the model's input takes {size}: select "
                    "the column that matches the model, or change the model's Input"
                )

    def _input_sizes(self) -> list[int | None]:
        """Values per row each feature column must have (None: unknown or not checked)."""
        count = len(self.plan.data.features)
        if not self.check_inputs:
            return [None] * count
        sizes: list[int | None] = []
        for shape in input_shapes(self.model(), count):
            dims = [] if shape is None else list(shape[1:])
            sizes.append(None if shape is None or None in dims else int(np.prod(dims)))
        return sizes
