"""The one transformer Spark ML lacks for Keras users: a model's output to a class index.

Everything else the classic Distributed Keras transformers did has a Spark ML stage (see
``docs/migration.md``). Spark's classifiers write a class index themselves; a Keras model
writes its raw output — a probability vector for a softmax layer, one probability for a
sigmoid — so :class:`ArgmaxTransformer` turns that into the double index that
``MulticlassClassificationEvaluator`` and ``IndexToString`` expect. It is a Spark SQL
expression (no Python UDF), so it runs in the JVM.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param.shared import HasInputCol, HasOutputCol, HasThreshold
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F  # noqa: N812 - Spark's own convention
from pyspark.sql import types as T  # noqa: N812


class ArgmaxTransformer(
    Transformer,
    HasInputCol,
    HasOutputCol,
    HasThreshold,
    DefaultParamsReadable["ArgmaxTransformer"],
    DefaultParamsWritable,
):
    """Write the index of the largest entry of a vector (or array) column as a double.

    A number column (a single sigmoid output) becomes 1.0 when it is at least ``threshold``
    and 0.0 otherwise. Ties go to the first largest entry; a null or empty input gives null.

    Args:
        inputCol: the model output column (default ``"probability"``).
        outputCol: the class index column (default ``"prediction"``).
        threshold: the cut-off for a single-number input (default 0.5).
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "probability",  # noqa: N803 - Spark ML's naming
        outputCol: str = "prediction",  # noqa: N803
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self._setDefault(inputCol="probability", outputCol="prediction", threshold=0.5)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(  # noqa: N802
        self,
        *,
        inputCol: str = "probability",  # noqa: N803
        outputCol: str = "prediction",  # noqa: N803
        threshold: float = 0.5,
    ) -> ArgmaxTransformer:
        """Set the given Params (keyword arguments only)."""
        return self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        name = self.getInputCol()
        if name not in dataset.columns:
            raise KeyError(f"column {name!r} is not in the DataFrame (have {dataset.columns})")
        kind = dataset.schema[name].dataType
        column = F.col(name)
        if isinstance(kind, T.NumericType):
            index = F.when(column.isNull(), None).otherwise(
                (column >= F.lit(self.getThreshold())).cast("double")
            )
        else:
            if not isinstance(kind, T.ArrayType):
                if not isinstance(kind, VectorUDT):
                    raise TypeError(f"column {name!r} must be a vector, array or number: {kind}")
                # vector_to_array refuses null; CASE WHEN evaluates only the branch it takes.
                column = F.when(column.isNull(), None).otherwise(vector_to_array(column))
            # array_position is 1-based and finds the first occurrence of the maximum.
            index = (F.array_position(column, F.array_max(column)) - 1).cast("double")
        return dataset.withColumn(self.getOutputCol(), index)
