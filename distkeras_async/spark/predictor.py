"""Distributed prediction: a Keras model applied batch-wise to a DataFrame on the executors.

:class:`ModelPredictor` ships the model once per Spark task as plain values (the Keras config as
JSON, the weights as one flat float32 buffer and its layout), rebuilds it there, and predicts
whole Arrow batches at a time through ``mapInArrow``. Every input column and the row order
are kept; the prediction becomes a vector column, or a double for a single-output regression.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F  # noqa: N812 - Spark's own convention
from pyspark.sql import types as T  # noqa: N812

from distkeras_async import checks
from distkeras_async.layout import Layout
from distkeras_async.spark.jobs import float_column
from distkeras_async.worker.serialization import expand_custom_objects

_FEATURES = "__distkeras_features"
_OUTPUT = "__distkeras_prediction"


class ModelPredictor:
    """Predict with a Keras model on every row of a DataFrame, batch-wise on the executors.

    Args:
        keras_model: a built Keras 3 model (it is not modified).
        features_col: the feature column (vector, array or number).
        output_col: the column to write: a dense vector, or a double when the model has one
            output unit and ``scalar_output`` is not False.
        batch_size: rows per ``predict_on_batch`` call on an executor.
        custom_objects: custom Keras classes and functions, by name.
        scalar_output: write a double (True), a vector (False), or decide from the model's
            output width (None, the default).
    """

    def __init__(
        self,
        keras_model: Any,
        features_col: str = "features",
        output_col: str = "prediction",
        batch_size: int = 1024,
        *,
        custom_objects: Mapping[str, Any] | None = None,
        scalar_output: bool | None = None,
    ) -> None:
        import keras

        if not isinstance(keras_model, keras.Model) or not keras_model.built:
            raise ValueError("keras_model must be a built keras.Model")
        checks.positive_int(batch_size, "batch_size")
        self.features_col = features_col
        self.output_col = output_col
        self.batch_size = batch_size
        self.custom_objects = expand_custom_objects(custom_objects)
        self._config = json.dumps(keras.saving.serialize_keras_object(keras_model))
        weights = keras_model.get_weights()
        self._layout = Layout.of(weights)
        # The weights travel as one bytes object: data, not a pickled live object.
        self._weights = self._layout.flatten(weights).tobytes()
        width = int(keras_model.outputs[0].shape[-1]) if _has_outputs(keras_model) else None
        self.scalar_output = (width == 1) if scalar_output is None else scalar_output

    def predict(self, dataframe: DataFrame) -> DataFrame:
        """``dataframe`` with the prediction column added, rows in their original order."""
        if self.features_col not in dataframe.columns:
            raise KeyError(
                f"column {self.features_col!r} is not in the DataFrame (have {dataframe.columns})"
            )
        if self.output_col in dataframe.columns:
            raise ValueError(f"the DataFrame already has a column {self.output_col!r}")
        prepared = dataframe.withColumn(_FEATURES, float_column(dataframe, self.features_col))
        schema = T.StructType(
            [*prepared.schema.fields, T.StructField(_OUTPUT, T.ArrayType(T.FloatType()))]
        )
        predicted = prepared.mapInArrow(
            _predict_task(
                self._config,
                self._weights,
                self._layout.to_wire(),
                self.batch_size,
                self.custom_objects,
            ),
            schema,
        ).drop(_FEATURES)
        if self.scalar_output:
            column = F.col(_OUTPUT)[0].cast("double")
        else:
            column = array_to_vector(F.col(_OUTPUT))
        return predicted.withColumn(self.output_col, column).drop(_OUTPUT)


def _has_outputs(model: Any) -> bool:
    try:
        return bool(model.outputs)
    except (AttributeError, ValueError):  # subclassed models have no symbolic outputs
        return False


def _predict_task(
    config: str,
    weights: bytes,
    layout_wire: list[Any],
    batch_size: int,
    custom_objects: Mapping[str, Any],
) -> Any:
    """The per-task function; it captures only plain values (TorchDistributor's pattern)."""

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import keras
        import numpy as np

        from distkeras_async.spark.arrow import column_to_numpy
        from distkeras_async.worker.inputs import shape_inputs

        with keras.saving.custom_object_scope(dict(custom_objects)):
            model = keras.saving.deserialize_keras_object(json.loads(config))
        layout = Layout.from_wire(layout_wire)
        model.set_weights(layout.unflatten(np.frombuffer(weights, np.float32)))
        for batch in batches:
            (x,) = shape_inputs(model, [column_to_numpy(batch.column(_FEATURES), _FEATURES)])
            outputs = [
                np.asarray(model.predict_on_batch(x[i : i + batch_size]), np.float32)
                for i in range(0, len(x), batch_size)
            ]
            if not outputs:
                column = pa.array([], type=pa.list_(pa.float32()))
            else:
                y = np.concatenate(outputs).reshape(len(x), -1)
                offsets = np.arange(0, y.size + 1, y.shape[1], dtype=np.int32)
                column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(y.reshape(-1)))
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, column], names=[*batch.schema.names, _OUTPUT]
            )

    return task
