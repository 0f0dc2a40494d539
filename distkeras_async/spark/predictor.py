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
from distkeras_async.spark.jobs import executor_environment, float_column, prepare_task
from distkeras_async.spark.model_cache import model_key
from distkeras_async.spark.resources import resolve_use_gpu
from distkeras_async.worker.backend import check_backend, current_backend
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
        backend: the Keras backend the executors predict on (default: the driver's).
        use_gpu: predict on the GPUs Spark gives each task (True; fails before the job when
            tasks get none), on the CPU only, hiding any GPU (False), or on the task's GPUs
            if it has any (None, the default). The driver only serializes the model.
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
        backend: str | None = None,
        use_gpu: bool | None = None,
    ) -> None:
        import keras

        if not isinstance(keras_model, keras.Model) or not keras_model.built:
            raise ValueError("keras_model must be a built keras.Model")
        checks.positive_int(batch_size, "batch_size")
        self.backend = check_backend(backend or current_backend())
        self.use_gpu = use_gpu
        self.features_col = features_col
        self.output_col = output_col
        self.batch_size = batch_size
        self.custom_objects = expand_custom_objects(custom_objects)
        self._config = json.dumps(keras.saving.serialize_keras_object(keras_model))
        weights = keras_model.get_weights()
        self._layout = Layout.of(weights)
        # The weights travel as one bytes object: data, not a pickled live object.
        self._weights = self._layout.flatten(weights).tobytes()
        self._key = model_key(self._config, self._weights)
        # The weights reach the executors once, as a Spark broadcast: shipped inside every
        # task they cost each task their transfer and unpickling (measured: 0.15 s per task
        # for a 2.2M-parameter model). Made on the first predict, kept for later ones.
        self._broadcast: Any = None
        width = int(keras_model.outputs[0].shape[-1]) if _has_outputs(keras_model) else None
        self.scalar_output = (width == 1) if scalar_output is None else scalar_output

    def _weights_broadcast(self, dataframe: DataFrame) -> Any:
        if self._broadcast is None:
            self._broadcast = dataframe.sparkSession.sparkContext.broadcast(self._weights)
        return self._broadcast

    def predict(self, dataframe: DataFrame) -> DataFrame:
        """``dataframe`` with the prediction column added, rows in their original order."""
        if self.features_col not in dataframe.columns:
            raise KeyError(
                f"column {self.features_col!r} is not in the DataFrame (have {dataframe.columns})"
            )
        if self.output_col in dataframe.columns:
            raise ValueError(f"the DataFrame already has a column {self.output_col!r}")
        prepared = dataframe.withColumn(
            _FEATURES, float_column(dataframe, self.features_col, for_workers=True)
        )
        schema = T.StructType(
            [*prepared.schema.fields, T.StructField(_OUTPUT, T.ArrayType(T.FloatType()))]
        )
        gpu = resolve_use_gpu(dataframe.sparkSession, self.use_gpu)
        task = _predict_task(
            self._config,
            self._key,
            self._weights_broadcast(dataframe),
            self._layout.to_wire(),
            self.batch_size,
            self.custom_objects,
            self.backend,
            gpu,
        )
        with executor_environment(dataframe.sparkSession, self.backend, gpu):
            predicted = prepared.mapInArrow(task, schema).drop(_FEATURES)
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
    key: str,
    weights: Any,
    layout_wire: list[Any],
    batch_size: int,
    custom_objects: Mapping[str, Any],
    backend: str = "tensorflow",
    use_gpu: bool = False,
) -> Any:
    """The per-task function; it captures only plain values (TorchDistributor's pattern).

    ``weights`` is a Spark broadcast of the flat float32 weights (or the bytes themselves),
    read only by the Python worker that builds the model first: later tasks find it cached.
    """

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np

        prepare_task(backend, use_gpu)  # before anything imports Keras

        # Imported on the executor, not pickled with the task: the cache outlives the task.
        from distkeras_async.spark import model_cache
        from distkeras_async.worker.columns import column_to_numpy
        from distkeras_async.worker.inputs import shape_inputs

        def build() -> Any:
            flat = weights if isinstance(weights, bytes) else weights.value
            return model_cache.build_from(config, flat, layout_wire, custom_objects)

        model = model_cache.cached_model(key, build)
        for batch in batches:
            (x,) = shape_inputs(model, [column_to_numpy(batch.column(_FEATURES), _FEATURES)])
            outputs = [
                _predict_fixed(model, x[i : i + batch_size], batch_size)
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


def _predict_fixed(model: Any, x: Any, batch_size: int) -> Any:
    """Predict ``x`` in a batch of exactly ``batch_size`` rows (the last one padded).

    A predict function is traced once per input shape: a short last batch in every task
    would trace it again (and warn about retracing).
    """
    import numpy as np

    rows = len(x)
    if rows < batch_size:
        pad = np.zeros((batch_size - rows, *x.shape[1:]), x.dtype)
        x = np.concatenate([x, pad])
    return np.asarray(model.predict_on_batch(x), np.float32)[:rows]
