"""The Spark ML Params of :class:`~distkeras_async.ml.estimator.KerasEstimator`.

Two kinds of Params make up a stage. The run options (``numWorkers``, ``shuffleWindow``,
``roundTimeout``, ...) are declared once, in :mod:`distkeras_async.options`, and their
Params, defaults, getters, setters and keywords are generated from those declarations
(:mod:`distkeras_async.ml.generated`). The estimator's own Params (the Keras model,
optimizer, loss and metrics, the algorithm and its hyperparameters, shuffling, validation,
callbacks) are not run options: they are written out here.

Each Param has a type converter that refuses a bad value when it is set (a TypeError naming
the Param, leaving the stage unchanged) and turns Keras objects into JSON-able configs, so
that a stage can be saved with Spark's own metadata format. A name that Keras does not know
(a loss, a metric, an optimizer) or an algorithm that is not registered fails here, on the
driver, not later inside a Spark task.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pyspark.ml.param import Param, Params
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasThresholds,
)

from distkeras_async import registry
from distkeras_async.ml.generated import (
    OPTION_NAMES,
    OPTIONS,
    converter,
    option_defaults,
    option_value,
    with_option_params,
)
from distkeras_async.trainers.model_config import serialize_config, serialize_optimizer

# Names that ``Model.compile`` resolves itself from the loss; ``keras.metrics.get`` refuses them.
_COMPILE_METRIC_NAMES = {"acc", "accuracy", "ce", "crossentropy"}


def _keras_model(value: Any) -> Any:
    import keras

    if not isinstance(value, keras.Model) or not value.built or not value.weights:
        raise TypeError(f"expected a built keras.Model with weights, got {type(value).__name__}")
    custom = sorted(_custom_classes(keras.saving.serialize_keras_object(value)))
    if custom:
        # Executors rebuild the model from its config, and a saved stage names no code to
        # import: only Keras' own classes can be rebuilt there, and loaded safely.
        raise TypeError(
            f"the model uses classes that are not part of Keras ({', '.join(custom)}); "
            "KerasEstimator supports Keras' own layers, losses and metrics: train a model with "
            "custom objects with a trainer and its custom_objects argument"
        )
    return value


def _custom_classes(config: Any) -> set[str]:
    """Names of the classes in a Keras config that Keras itself does not provide."""
    found: set[str] = set()
    if isinstance(config, Mapping):
        # Keras' own classes name their module (keras.layers, keras.src.models...); a
        # registered or user class has no module, or another one.
        module = str(config.get("module") or "")
        if "class_name" in config and "module" in config and not module.startswith("keras"):
            found.add(str(config.get("registered_name") or config["class_name"]))
        for item in config.values():
            found |= _custom_classes(item)
    elif isinstance(config, list):
        for item in config:
            found |= _custom_classes(item)
    return found


def _optimizer(value: Any) -> str | dict[str, Any]:
    """A name stays a name (readable in ``explainParams``); anything else becomes its config."""
    config = serialize_optimizer(value)
    return value if isinstance(value, str) else config


def _check_names(value: Any, get: Callable[[Any], Any], allowed: set[str]) -> None:
    """Resolve every name and config in ``value`` (nested in lists and dicts) with ``get``."""
    if isinstance(value, str):
        if value not in allowed:
            get(value)
    elif isinstance(value, Mapping) and "class_name" in value:
        get(dict(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_names(item, get, allowed)
    elif isinstance(value, list):
        for item in value:
            _check_names(item, get, allowed)


def _loss(value: Any) -> Any:
    import keras

    config = serialize_config(value, "loss")
    _check_names(config, keras.losses.get, set())
    return config


def _metrics(value: Any) -> list[Any]:
    import keras

    values = list(value) if isinstance(value, list | tuple) else [value]
    config = serialize_config(values, "metric")
    _check_names(config, keras.metrics.get, _COMPILE_METRIC_NAMES)
    return list(config)


def _algorithm(value: Any) -> str:
    """A registered algorithm's name: a class is accepted when it is the registered one."""
    name = value if isinstance(value, str) else getattr(value, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"expected a registered algorithm name or class, got {value!r}")
    registered = registry.get(name)
    if not isinstance(value, str) and registered is not value:
        raise TypeError(
            f"{value!r} is not the class registered as {name!r}: register it first "
            "(distkeras_async.registry.register) so that a saved stage can name it"
        )
    return name


def _hyperparameters(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"expected a dict of hyperparameter name -> value, got {value!r}")
    for key, item in value.items():
        if key in OPTION_NAMES:
            # The trainer takes hyperparameters and options as keywords alike: one given
            # here would collide with the Param's value, or with what the estimator sets.
            params = [o.spec.param for o in OPTIONS if o.name == key]
            where = f"set the {params[0]!r} Param" if params else "the estimator sets it"
            raise TypeError(f"{key!r} is a run option, not a hyperparameter: {where}")
        if not isinstance(item, bool | int | float | str):
            raise TypeError(f"hyperparameter {key!r} must be a number, bool or string")
    return dict(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected True or False, got {value!r}")
    return value


def _column(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a column name, got {value!r}")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise TypeError(f"expected a fraction in [0, 1), got {value!r}")
    return float(value)


def _callbacks(value: Any) -> list[Any]:
    from distkeras_async.trainers.validation import check_callbacks

    return check_callbacks(value)


class HasKerasModel(Params):
    """Mixin for the ``model`` Param: a built Keras 3 model."""

    model: Param[Any] = Param(
        Params._dummy(),
        "model",
        "a built Keras 3 model (stored in the .keras format when saved)",
        typeConverter=converter("model", _keras_model),
    )

    def getModel(self) -> Any:  # noqa: N802 - Spark ML's naming
        """The ``model`` Param's value."""
        return self.getOrDefault(self.model)


def _param(name: str, doc: str, convert: Callable[[Any], Any]) -> Param[Any]:
    return Param(Params._dummy(), name, doc, typeConverter=converter(name, convert))


@with_option_params
class KerasEstimatorParams(
    HasKerasModel,
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasThresholds,
):
    """The Params of :class:`~distkeras_async.ml.estimator.KerasEstimator`, with their getters.

    The run options' Params and getters (``numWorkers``/``getNumWorkers``, ...) are generated
    from their declarations (:func:`~distkeras_async.ml.generated.with_option_params`); a
    getter returns None for an option that has no default and is not set.
    ``probabilityCol``, ``rawPredictionCol`` and ``thresholds`` are Spark's own classifier
    Params: a model trained with a classification loss writes those columns.
    """

    optimizer = _param(
        "optimizer",
        "each worker's local Keras optimizer: a name, an instance or its config",
        _optimizer,
    )
    loss = _param(
        "loss",
        "the Keras loss: a name or config (a list or dict of them for several outputs)",
        _loss,
    )
    metrics = _param("metrics", "Keras metrics recorded in the training history", _metrics)
    algorithm = _param(
        "algorithm",
        "a registered distkeras-async algorithm (distkeras-async algorithms lists them)",
        _algorithm,
    )
    hyperparameters = _param(
        "hyperparameters",
        "the algorithm's hyperparameters, e.g. {'communication_window': 5}",
        _hyperparameters,
    )
    shuffle = _param(
        "shuffle",
        "shuffle rows between workers, and each worker's rows every epoch",
        _boolean,
    )
    validationCol = _param(  # noqa: N815 - Spark ML's naming
        "validationCol",
        "a boolean column: rows where it is true are validation data, not trained on",
        _column,
    )
    validationFraction = _param(  # noqa: N815
        "validationFraction",
        "a fraction of the rows held out (seeded) as validation data; 0 for none",
        _fraction,
    )
    callbacks = _param(
        "callbacks",
        "Keras callbacks run on the driver at every global epoch (not saved with the stage)",
        _callbacks,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            optimizer="adam",
            metrics=["accuracy"],
            algorithm="downpour",
            hyperparameters={},
            shuffle=False,
            validationFraction=0.0,
        )
        self._setDefault(**option_defaults())

    def getOptimizer(self) -> Any:  # noqa: N802
        """The ``optimizer`` Param's value (a name or a Keras config)."""
        return self.getOrDefault(self.optimizer)

    def getLoss(self) -> Any:  # noqa: N802
        """The ``loss`` Param's value."""
        return self.getOrDefault(self.loss)

    def getMetrics(self) -> list[Any]:  # noqa: N802
        """The ``metrics`` Param's value."""
        return list(self.getOrDefault(self.metrics))

    def getAlgorithm(self) -> str:  # noqa: N802
        """The ``algorithm`` Param's value (a registered name)."""
        return str(self.getOrDefault(self.algorithm))

    def getHyperparameters(self) -> dict[str, Any]:  # noqa: N802
        """The ``hyperparameters`` Param's value."""
        return dict(self.getOrDefault(self.hyperparameters))

    def getShuffle(self) -> bool:  # noqa: N802
        """The ``shuffle`` Param's value."""
        return bool(self.getOrDefault(self.shuffle))

    def getValidationCol(self) -> str | None:  # noqa: N802
        """The ``validationCol`` Param's value, or None when it is not set."""
        value = self._optional(self.validationCol)
        return None if value is None else str(value)

    def getValidationFraction(self) -> float:  # noqa: N802
        """The ``validationFraction`` Param's value."""
        return float(self.getOrDefault(self.validationFraction))

    def getCallbacks(self) -> list[Any]:  # noqa: N802
        """The ``callbacks`` Param's value (empty when it is not set)."""
        return list(self._optional(self.callbacks) or [])

    def _optional(self, param: str | Param[Any]) -> Any:
        return option_value(self, param)


# The estimator's own keywords, in the order its signature lists them, with their types;
# their defaults are the Params' (the run options follow, generated).
_OWN_KEYWORDS = {
    "model": "keras.Model | None",
    "optimizer": "Any",
    "loss": "Any",
    "metrics": "list[Any] | None",
    "algorithm": "str | type",
    "hyperparameters": "Mapping[str, Any] | None",
    "shuffle": "bool",
    "featuresCol": "str",
    "labelCol": "str",
    "predictionCol": "str",
    "probabilityCol": "str",
    "rawPredictionCol": "str",
    "thresholds": "list[float] | None",
    "validationCol": "str | None",
    "validationFraction": "float",
    "callbacks": "list[keras.callbacks.Callback] | None",
}


def _keywords() -> list[inspect.Parameter]:
    """One keyword-only parameter per Param of the estimator, defaulting as the Param does."""
    defaults = KerasEstimatorParams()
    types = {**_OWN_KEYWORDS, **{str(o.spec.param): o.annotation for o in OPTIONS}}
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=option_value(defaults, name),
            annotation=kind,
        )
        for name, kind in types.items()
    ]


KEYWORDS = _keywords()
"""The keywords of ``KerasEstimator(...)`` and ``setParams``: every Param, with its default."""
