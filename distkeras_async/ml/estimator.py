"""Spark ML stages: :class:`KerasEstimator` trains in a ``Pipeline``, :class:`KerasModel` predicts.

``KerasEstimator(model=..., loss=..., algorithm="downpour").fit(df)`` runs the same
parameter-server training as the named trainers (any registered algorithm, synchronous or
asynchronous) and returns a :class:`KerasModel`, whose ``transform`` predicts batch-wise on the
executors (:class:`~distkeras_async.predictors.ModelPredictor`). Both are ordinary Spark ML
stages: Params with defaults and docs, ``copy``, ``explainParams``, ``ParamGridBuilder``, and
``save``/``load`` on their own or inside a saved ``Pipeline``, with the Keras model stored in
Keras' ``.keras`` format (see :mod:`distkeras_async.ml.io`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F  # noqa: N812 - Spark's own convention
from pyspark.sql.types import BooleanType

from distkeras_async import registry
from distkeras_async.ml.generated import (
    check_keywords,
    option_values,
    set_keywords,
    with_keywords,
    with_option_setters,
)
from distkeras_async.ml.io import KerasParamsReadable, KerasParamsWritable
from distkeras_async.ml.params import KEYWORDS, KerasEstimatorParams
from distkeras_async.spark.predictor import ModelPredictor
from distkeras_async.trainers.input_checks import loss_name
from distkeras_async.trainers.model_config import ServerStats

# Losses whose model is a classifier: it writes Spark's rawPrediction, probability and
# prediction columns.
_CLASSIFICATION = (
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "categorical_focal_crossentropy",
    "binary_focal_crossentropy",
)
# Names as strings, configs and functions give them ("categorical_crossentropy"), and as a
# class name without its config ("categoricalcrossentropy").
CLASSIFICATION_LOSSES = frozenset(
    [*_CLASSIFICATION, *(n.replace("_", "") for n in _CLASSIFICATION)]
)


@with_option_setters
@with_keywords(KEYWORDS)
class KerasEstimator(
    Estimator["KerasModel"],
    KerasEstimatorParams,
    KerasParamsReadable["KerasEstimator"],
    KerasParamsWritable,
):
    """A Spark ML Estimator that trains a Keras model with a distkeras-async algorithm.

    ``fit(df)`` trains on ``featuresCol`` (a vector, array or number column; a
    ``VectorAssembler`` output works directly) against ``labelCol`` (a one-hot vector for
    ``categorical_crossentropy``, or a class index such as ``StringIndexer``'s for
    ``sparse_categorical_crossentropy``) and returns a :class:`KerasModel`. The ``model``
    Param's Keras model is not modified. After ``fit``, the :class:`KerasModel` has
    ``keras_history``: the Keras ``History`` with the workers' epoch metrics and the
    center's ``val_*`` metrics.

    Every Param is a keyword argument of the constructor and of ``setParams``, and has a
    getter and a setter (``getNumWorkers``, ``setNumWorkers``). The run options' Params, the
    last ones below, are generated from :mod:`distkeras_async.options`, where each is
    declared once for the trainers and the estimator alike. ``useGpu`` places the fitted
    model's predictions too; ``backend`` is the workers' only: ``transform`` predicts on the
    backend of the process it runs in.

    Args:
        model: a built Keras 3 model (required).
        optimizer: each worker's optimizer (default ``"adam"``).
        loss: a Keras loss (required).
        metrics: Keras metrics (default ``["accuracy"]``).
        algorithm: a registered algorithm name (default ``"downpour"``).
        hyperparameters: the algorithm's hyperparameters (default: the algorithm's defaults).
        shuffle: shuffle rows between workers and each worker's rows every epoch (default
            False), seeded by ``seed``.
        featuresCol: the features column (default ``"features"``).
        labelCol: the label column (default ``"label"``).
        predictionCol: the column the fitted model writes (default ``"prediction"``).
        probabilityCol: a classifier's probability column (default ``"probability"``).
        rawPredictionCol: a classifier's raw prediction column (default
            ``"rawPrediction"``).
        thresholds: a classifier's per-class thresholds (default: not set).
        validationCol: a boolean column marking validation rows, which are not trained on
            (default: none).
        validationFraction: a fraction of the rows held out, seeded by ``seed``, as
            validation data (default 0: none). Not together with ``validationCol``.
        callbacks: Keras callbacks run on the driver at every global epoch (not saved).
    """

    def __init__(self, **kwargs: Any) -> None:
        # Spark's keyword_only contract: keywords only, every value checked before any is
        # set. The keywords are generated (``__signature__`` lists them): an unknown one is
        # refused here, as a written-out signature would refuse it.
        check_keywords(type(self), f"{type(self).__name__}()", kwargs)
        super().__init__()
        set_keywords(self, kwargs)

    def setParams(self, **kwargs: Any) -> KerasEstimator:  # noqa: N802 - Spark ML's naming
        """Set the given Params (keyword arguments only; all or none of them)."""
        check_keywords(type(self), f"{type(self).__name__}.setParams()", kwargs)
        set_keywords(self, kwargs)
        return self

    def _keyword(self, **keyword: Any) -> KerasEstimator:
        # As a keyword would be: checked, and None unsets a Param without a default (Spark's
        # ``_set`` would store None unchecked, and the stage could not be loaded back).
        set_keywords(self, keyword)
        return self

    def setModel(self, value: Any) -> KerasEstimator:  # noqa: N802
        """Set the ``model`` Param."""
        return self._keyword(model=value)

    def setOptimizer(self, value: Any) -> KerasEstimator:  # noqa: N802
        """Set the ``optimizer`` Param."""
        return self._keyword(optimizer=value)

    def setLoss(self, value: Any) -> KerasEstimator:  # noqa: N802
        """Set the ``loss`` Param."""
        return self._keyword(loss=value)

    def setMetrics(self, value: Any) -> KerasEstimator:  # noqa: N802
        """Set the ``metrics`` Param."""
        return self._keyword(metrics=value)

    def setAlgorithm(self, value: Any) -> KerasEstimator:  # noqa: N802
        """Set the ``algorithm`` Param."""
        return self._keyword(algorithm=value)

    def setHyperparameters(self, value: Mapping[str, Any]) -> KerasEstimator:  # noqa: N802
        """Set the ``hyperparameters`` Param."""
        return self._keyword(hyperparameters=value)

    def setShuffle(self, value: bool) -> KerasEstimator:  # noqa: N802
        """Set the ``shuffle`` Param."""
        return self._keyword(shuffle=value)

    def setFeaturesCol(self, value: str) -> KerasEstimator:  # noqa: N802
        """Set the ``featuresCol`` Param."""
        return self._keyword(featuresCol=value)

    def setLabelCol(self, value: str) -> KerasEstimator:  # noqa: N802
        """Set the ``labelCol`` Param."""
        return self._keyword(labelCol=value)

    def setPredictionCol(self, value: str) -> KerasEstimator:  # noqa: N802
        """Set the ``predictionCol`` Param."""
        return self._keyword(predictionCol=value)

    def setValidationCol(self, value: str) -> KerasEstimator:  # noqa: N802
        """Set the ``validationCol`` Param."""
        return self._keyword(validationCol=value)

    def setValidationFraction(self, value: float) -> KerasEstimator:  # noqa: N802
        """Set the ``validationFraction`` Param."""
        return self._keyword(validationFraction=value)

    def setCallbacks(self, value: Any) -> KerasEstimator:  # noqa: N802
        """Set the ``callbacks`` Param."""
        return self._keyword(callbacks=value)

    def _validation(self, dataset: DataFrame) -> tuple[DataFrame, dict[str, Any]]:
        """The training rows, and ``train``'s validation keywords, from the Params."""
        column, fraction = self.getValidationCol(), self.getValidationFraction()
        if column is None:
            return dataset, ({"validation_split": fraction} if fraction else {})
        if fraction:
            raise ValueError("set validationCol or validationFraction, not both")
        if column not in dataset.columns:
            raise ValueError(f"validationCol {column!r} is not a column (have {dataset.columns})")
        kind = dataset.schema[column].dataType
        if not isinstance(kind, BooleanType):
            raise ValueError(
                f"validationCol {column!r} has type {kind.simpleString()}; it must be boolean"
            )
        marked = F.col(column)
        return dataset.filter(~marked | marked.isNull()), {
            "validation_data": dataset.filter(marked)
        }

    def _fit(self, dataset: DataFrame) -> KerasModel:
        from distkeras_async.trainers.base import DistributedTrainer

        for required in ("model", "loss"):
            if not self.isDefined(required):
                raise ValueError(f"KerasEstimator needs the {required!r} Param")
        trainer = DistributedTrainer(
            self.getModel(),
            self.getOptimizer(),
            self.getLoss(),
            self.getMetrics(),
            # Every declared option that is a Param, under the trainer's name (num_workers,
            # shuffle_window, round_timeout, ...); an unset one takes the trainer's default.
            **option_values(self),
            features_col=self.getFeaturesCol(),
            label_col=self.getLabelCol(),
            # A port the OS picks per fit: several fits on one driver never collide.
            master_port=0,
            algorithm=registry.get(self.getAlgorithm()),
            **self.getHyperparameters(),
        )
        training, validation = self._validation(dataset)
        trained = trainer.train(
            training, shuffle=self.getShuffle(), callbacks=self.getCallbacks(), **validation
        )
        fitted = self._copyValues(KerasModel())
        fitted._set(model=trained)
        fitted.keras_history = trainer.get_keras_history()
        fitted.history = trainer.get_history()
        fitted.training_time = trainer.get_training_time()
        fitted.parameter_server_stats = trainer.get_parameter_server_stats()
        return fitted


class KerasModel(
    Model,
    KerasEstimatorParams,
    KerasParamsReadable["KerasModel"],
    KerasParamsWritable,
):
    """The fitted stage: ``transform(df)`` adds ``predictionCol`` with the Keras model's output.

    The prediction is a dense vector (a probability vector for a softmax classifier; chain
    :class:`~distkeras_async.transformers.ArgmaxTransformer` for the class index), or a double
    for a model with one output unit. Every input column and the row order are kept.

    It carries every Param of the estimator that fitted it (epochs, batch size, algorithm,
    hyperparameters, ...), so the best model of a ``CrossValidator`` says how it was trained,
    and so does its saved metadata.

    Attributes:
        history: the training history (one dict per worker step), after ``fit`` only.
        keras_history: the Keras ``History`` of the fit (``keras_history.history["val_loss"]``,
            one entry per global epoch), after ``fit`` only.
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
        self.keras_history: Any = None
        self.training_time: float | None = None
        self.parameter_server_stats: ServerStats | None = None

    @keyword_only
    def setParams(  # noqa: N802
        self,
        *,
        model: Any = None,
        featuresCol: str = "features",  # noqa: N803
        predictionCol: str = "prediction",  # noqa: N803
    ) -> KerasModel:
        """Set the given Params (keyword arguments only)."""
        return self._set(**self._input_kwargs)

    def setModel(self, value: Any) -> KerasModel:  # noqa: N802
        """Set the ``model`` Param (a built Keras model)."""
        return self._set(model=value)

    def setFeaturesCol(self, value: str) -> KerasModel:  # noqa: N802
        """Set the ``featuresCol`` Param."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str) -> KerasModel:  # noqa: N802
        """Set the ``predictionCol`` Param."""
        return self._set(predictionCol=value)

    @property
    def keras_model(self) -> Any:
        """The trained Keras model."""
        return self.getModel()

    def is_classifier(self) -> bool:
        """Whether the model was trained with a classification loss (cross-entropy)."""
        if not self.isDefined(self.loss):
            return False
        losses = self.getLoss()
        names = (
            losses.values()
            if isinstance(losses, dict)
            else (losses if isinstance(losses, list) else [losses])
        )
        return any(loss_name(name) in CLASSIFICATION_LOSSES for name in names)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if not self.isDefined(self.model):
            raise ValueError("KerasModel has no Keras model (the 'model' Param)")
        if not self.is_classifier():
            return self._predictor(self.getPredictionCol(), scalar=None).predict(dataset)
        return self._classify(dataset)

    def _predictor(self, column: str, scalar: bool | None) -> ModelPredictor:
        # The model object itself is part of the key (held, so its id cannot be reused).
        use_gpu = self._optional("useGpu")
        key = (self.getModel(), self.getFeaturesCol(), column, scalar, use_gpu)
        cached = getattr(self, "_predictor_key", None)
        if cached is None or cached[0] is not key[0] or cached[1:] != key[1:]:
            # One predictor per model and columns: its weights are broadcast once, and every
            # transform (a CrossValidator's many) reuses them and the executors' cached model.
            self._cached_predictor = ModelPredictor(
                self.getModel(),
                features_col=self.getFeaturesCol(),
                output_col=column,
                scalar_output=scalar,
                use_gpu=use_gpu,
            )
            self._predictor_key = key
        return self._cached_predictor

    def _classify(self, dataset: DataFrame) -> DataFrame:
        """Spark's classifier columns: rawPrediction, probability and prediction.

        The probability vector is the model's output (softmax), or ``[1 - p, p]`` for one
        sigmoid unit; rawPrediction is the same vector (a Keras model's output is already
        normalised, and Spark's evaluators take either). The prediction is the class with the
        largest ``probability / threshold`` (Spark's ``thresholds`` rule), by default the
        most probable class.
        """
        names = [self.getRawPredictionCol(), self.getProbabilityCol(), self.getPredictionCol()]
        taken = [n for n in names if n in dataset.columns]
        if taken or len(set(names)) != 3:
            raise ValueError(
                f"the classifier columns {names} must be three new columns "
                f"(the DataFrame has {taken})"
            )
        output = "__distkeras_output"
        scored: DataFrame = self._predictor(output, scalar=False).predict(dataset)
        values = vector_to_array(F.col(output))
        if self.getModel().outputs[0].shape[-1] == 1:  # one sigmoid unit: P(class 1)
            values = F.array(F.lit(1.0) - values[0], values[0])
        probabilities = F.when(F.col(output).isNull(), None).otherwise(values)
        weighted = probabilities
        if self.isDefined(self.thresholds):
            thresholds = F.array(*[F.lit(float(t)) for t in self.getThresholds()])
            weighted = F.transform(probabilities, lambda p, i: p / F.element_at(thresholds, i + 1))
        prediction = (F.array_position(weighted, F.array_max(weighted)) - 1).cast("double")
        return (
            scored.withColumn(self.getRawPredictionCol(), array_to_vector(probabilities))
            .withColumn(self.getProbabilityCol(), array_to_vector(probabilities))
            .withColumn(self.getPredictionCol(), prediction)
            .drop(output)
        )
