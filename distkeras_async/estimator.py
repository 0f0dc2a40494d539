"""Spark ML stages: :class:`KerasEstimator` trains in a ``Pipeline``, :class:`KerasModel` predicts.

``KerasEstimator(model=..., loss=..., algorithm="downpour").fit(df)`` runs the same
parameter-server training as the named trainers (any registered algorithm, synchronous or
asynchronous) and returns a :class:`KerasModel`, whose ``transform`` predicts batch-wise on the
executors (:class:`~distkeras_async.predictors.ModelPredictor`). Both are ordinary Spark ML
stages: Params with defaults and docs, ``copy``, ``explainParams``, ``ParamGridBuilder``, and
``save``/``load`` on their own or inside a saved ``Pipeline``, with the Keras model stored in
Keras' ``.keras`` format (see :mod:`distkeras_async.ml_io`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasLabelCol, HasPredictionCol
from pyspark.sql import DataFrame

from distkeras_async import registry
from distkeras_async.errors import DistKerasError
from distkeras_async.ml_io import KerasParamsReadable, KerasParamsWritable
from distkeras_async.serialization import (
    SerializationError,
    serialize_config,
    serialize_optimizer,
)
from distkeras_async.stats import ServerStats


def _to_keras_model(value: Any) -> Any:
    import keras

    if not isinstance(value, keras.Model) or not value.built or not value.weights:
        raise TypeError(f"expected a built keras.Model with weights, got {type(value).__name__}")
    return value


def _to_optimizer(value: Any) -> str | dict[str, Any]:
    """A name stays a name (readable in ``explainParams``); anything else becomes its config."""
    try:
        config = serialize_optimizer(value)
    except SerializationError as exc:
        raise TypeError(str(exc)) from exc
    return value if isinstance(value, str) else config


def _to_config(what: str) -> Any:
    def convert(value: Any) -> Any:
        try:
            return serialize_config(value, what)
        except SerializationError as exc:
            raise TypeError(str(exc)) from exc

    return convert


def _to_metrics(value: Any) -> list[Any]:
    values = [value] if isinstance(value, str) or not isinstance(value, list | tuple) else value
    return list(_to_config("metric")(list(values)))


def _to_algorithm(value: Any) -> str:
    """A registered algorithm's name: a class is accepted when it is the registered one."""
    name = value if isinstance(value, str) else getattr(value, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"expected a registered algorithm name or class, got {value!r}")
    try:
        registered = registry.get(name)
    except DistKerasError as exc:
        raise TypeError(str(exc)) from exc
    if not isinstance(value, str) and registered is not value:
        raise TypeError(
            f"{value!r} is not the class registered as {name!r}: register it first "
            "(distkeras_async.register) so that a saved stage can name it"
        )
    return name


def _to_hyperparameters(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"expected a dict of hyperparameter name -> value, got {value!r}")
    for key, item in value.items():
        if not (item is None or isinstance(item, bool | int | float | str)):
            raise TypeError(f"hyperparameter {key!r} must be a number, bool or string")
    return dict(value)


def _to_positive_int(value: Any) -> int:
    number = TypeConverters.toInt(value)
    if number < 1:
        raise TypeError(f"expected a positive int, got {value!r}")
    return number


class HasKerasModel(Params):
    """Mixin for the ``model`` Param: a built Keras 3 model."""

    model: Param[Any] = Param(
        Params._dummy(),
        "model",
        "a built Keras 3 model (stored in the .keras format when saved)",
        typeConverter=_to_keras_model,
    )

    def getModel(self) -> Any:  # noqa: N802 - Spark ML's naming
        """The ``model`` Param's value."""
        return self.getOrDefault(self.model)


class _KerasEstimatorParams(HasKerasModel, HasFeaturesCol, HasLabelCol, HasPredictionCol):
    """The Params of :class:`KerasEstimator`."""

    optimizer: Param[Any] = Param(
        Params._dummy(),
        "optimizer",
        "each worker's local Keras optimizer: a name, an instance or its config",
        typeConverter=_to_optimizer,
    )
    loss: Param[Any] = Param(
        Params._dummy(),
        "loss",
        "the Keras loss: a name or config (a list or dict of them for several outputs)",
        typeConverter=_to_config("loss"),
    )
    metrics: Param[list[Any]] = Param(
        Params._dummy(),
        "metrics",
        "Keras metrics recorded in the training history",
        typeConverter=_to_metrics,
    )
    algorithm: Param[str] = Param(
        Params._dummy(),
        "algorithm",
        "a registered distkeras-async algorithm (distkeras-async algorithms lists them)",
        typeConverter=_to_algorithm,
    )
    hyperparameters: Param[dict[str, Any]] = Param(
        Params._dummy(),
        "hyperparameters",
        "the algorithm's hyperparameters, e.g. {'communication_window': 5}",
        typeConverter=_to_hyperparameters,
    )
    numWorkers: Param[int] = Param(  # noqa: N815 - Spark ML's naming
        Params._dummy(),
        "numWorkers",
        "Spark tasks training in parallel (synchronous algorithms need as many slots)",
        typeConverter=_to_positive_int,
    )
    numEpochs: Param[int] = Param(  # noqa: N815
        Params._dummy(), "numEpochs", "passes over the data", typeConverter=_to_positive_int
    )
    batchSize: Param[int] = Param(  # noqa: N815
        Params._dummy(), "batchSize", "samples per local step", typeConverter=_to_positive_int
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            optimizer="adam",
            metrics=["accuracy"],
            algorithm="downpour",
            hyperparameters={},
            numWorkers=2,
            numEpochs=1,
            batchSize=32,
        )


class KerasEstimator(
    Estimator["KerasModel"],
    _KerasEstimatorParams,
    KerasParamsReadable["KerasEstimator"],
    KerasParamsWritable,
):
    """A Spark ML Estimator that trains a Keras model with a distkeras-async algorithm.

    ``fit(df)`` trains on ``featuresCol`` (a vector, array or number column; a
    ``VectorAssembler`` output works directly) against ``labelCol`` (a one-hot vector for
    ``categorical_crossentropy``, or a class index such as ``StringIndexer``'s for
    ``sparse_categorical_crossentropy``) and returns a :class:`KerasModel`. The ``model``
    Param's Keras model is not modified.

    Args:
        model: a built Keras 3 model (required).
        optimizer: each worker's optimizer (default ``"adam"``).
        loss: a Keras loss (required).
        metrics: Keras metrics (default ``["accuracy"]``).
        algorithm: a registered algorithm name (default ``"downpour"``).
        hyperparameters: the algorithm's hyperparameters (default: the algorithm's defaults).
        numWorkers: parallel workers (default 2).
        numEpochs: passes over the data (default 1).
        batchSize: samples per local step (default 32).
        featuresCol: the features column (default ``"features"``).
        labelCol: the label column (default ``"label"``).
        predictionCol: the column the fitted model writes (default ``"prediction"``).
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        model: Any = None,
        optimizer: Any = "adam",
        loss: Any = None,
        metrics: Any = None,
        algorithm: Any = "downpour",
        hyperparameters: Mapping[str, Any] | None = None,
        numWorkers: int = 2,  # noqa: N803 - Spark ML's naming
        numEpochs: int = 1,  # noqa: N803
        batchSize: int = 32,  # noqa: N803
        featuresCol: str = "features",  # noqa: N803
        labelCol: str = "label",  # noqa: N803
        predictionCol: str = "prediction",  # noqa: N803
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(  # noqa: N802
        self,
        *,
        model: Any = None,
        optimizer: Any = "adam",
        loss: Any = None,
        metrics: Any = None,
        algorithm: Any = "downpour",
        hyperparameters: Mapping[str, Any] | None = None,
        numWorkers: int = 2,  # noqa: N803
        numEpochs: int = 1,  # noqa: N803
        batchSize: int = 32,  # noqa: N803
        featuresCol: str = "features",  # noqa: N803
        labelCol: str = "label",  # noqa: N803
        predictionCol: str = "prediction",  # noqa: N803
    ) -> KerasEstimator:
        """Set the given Params (keyword arguments only)."""
        return self._set(**self._input_kwargs)

    def _fit(self, dataset: DataFrame) -> KerasModel:
        from distkeras_async.training import DistributedTrainer

        for required in ("model", "loss"):
            if not self.isDefined(required) or self.getOrDefault(required) is None:
                raise ValueError(f"KerasEstimator needs the {required!r} Param")
        trainer = DistributedTrainer(
            self.getModel(),
            self.getOrDefault(self.optimizer),
            self.getOrDefault(self.loss),
            self.getOrDefault(self.metrics) or [],
            num_workers=self.getOrDefault(self.numWorkers),
            batch_size=self.getOrDefault(self.batchSize),
            features_col=self.getFeaturesCol(),
            label_col=self.getLabelCol(),
            num_epoch=self.getOrDefault(self.numEpochs),
            # A free port per fit: CrossValidator may fit several models at once.
            master_port=0,
            algorithm=registry.get(self.getOrDefault(self.algorithm)),
            **(self.getOrDefault(self.hyperparameters) or {}),
        )
        trained = trainer.train(dataset)
        fitted = self._copyValues(KerasModel())
        fitted._set(model=trained)
        fitted.history = trainer.get_history()
        fitted.training_time = trainer.get_training_time()
        fitted.parameter_server_stats = trainer.get_parameter_server_stats()
        return fitted


class KerasModel(
    Model,
    HasKerasModel,
    HasFeaturesCol,
    HasPredictionCol,
    KerasParamsReadable["KerasModel"],
    KerasParamsWritable,
):
    """The fitted stage: ``transform(df)`` adds ``predictionCol`` with the Keras model's output.

    The prediction is a dense vector (a probability vector for a softmax classifier; chain
    :class:`~distkeras_async.transformers.ArgmaxTransformer` for the class index), or a double
    for a model with one output unit. Every input column and the row order are kept.

    Attributes:
        history: the training history (one dict per worker step), after ``fit`` only.
        training_time: seconds ``fit`` trained, after ``fit`` only.
        parameter_server_stats: the parameter server's statistics, after ``fit`` only.
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        model: Any = None,
        featuresCol: str = "features",  # noqa: N803
        predictionCol: str = "prediction",  # noqa: N803
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)
        self.history: list[dict[str, Any]] = []
        self.training_time: float | None = None
        self.parameter_server_stats: ServerStats | None = None

    @property
    def keras_model(self) -> Any:
        """The trained Keras model."""
        return self.getModel()

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from distkeras_async.predictors import ModelPredictor

        if not self.isDefined(self.model) or self.getModel() is None:
            raise ValueError("KerasModel has no Keras model (the 'model' Param)")
        predictor = ModelPredictor(
            self.getModel(), features_col=self.getFeaturesCol(), output_col=self.getPredictionCol()
        )
        return predictor.predict(dataset)
