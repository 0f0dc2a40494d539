"""The Spark ML Params of :class:`~distkeras_async.estimator.KerasEstimator` and their checks.

Each Param has a type converter that refuses a bad value when it is set (naming the Param,
leaving the stage unchanged) and turns Keras objects into JSON-able configs, so that a stage
can be saved with Spark's own metadata format. A name that Keras does not know (a loss, a
metric, an optimizer) or an algorithm that is not registered fails here, on the driver, not
later inside a Spark task.
"""

from __future__ import annotations

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

from distkeras_async import checks, registry
from distkeras_async.errors import DistKerasError
from distkeras_async.worker.backend import BACKENDS
from distkeras_async.worker.partition import IN_MEMORY_LIMIT
from distkeras_async.worker.serialization import (
    serialize_config,
    serialize_optimizer,
)

# Names that ``Model.compile`` resolves itself from the loss; ``keras.metrics.get`` refuses them.
_COMPILE_METRIC_NAMES = {"acc", "accuracy", "ce", "crossentropy"}


def _converter(name: str, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap ``convert`` so that every refusal is a TypeError naming the Param."""

    def checked(value: Any) -> Any:
        if value is None:
            raise TypeError(f"{name} cannot be None")
        try:
            return convert(value)
        except (DistKerasError, ValueError, TypeError) as exc:
            raise TypeError(f"{name}: {exc}") from exc

    return checked


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
        if not isinstance(item, bool | int | float | str):
            raise TypeError(f"hyperparameter {key!r} must be a number, bool or string")
    return dict(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected True or False, got {value!r}")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # as Spark's TypeConverters.toInt
    if not checks.is_int(value) or value < 0:
        raise TypeError(f"expected a non-negative int, got {value!r}")
    return int(value)


def _backend(value: Any) -> str:
    if value not in BACKENDS:
        raise TypeError(f"expected one of {sorted(BACKENDS)}, got {value!r}")
    return str(value)


def _positive_int(value: Any) -> int:
    # Spark's own int Params (maxIter, ...) go through TypeConverters.toInt, which takes an
    # integral float such as 2.0; ours do the same, then the package's one positive-int rule.
    # A converter raises TypeError: that is Spark's contract for Param converters.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return checks.positive_int(value, "the value")
    except ValueError as exc:
        raise TypeError(str(exc)) from None


def _column(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a column name, got {value!r}")
    return value


def _class_weight(value: Any) -> dict[int, float]:
    """``{class index: weight}``; keys written as strings (saved metadata is JSON) come back."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a dict {{class index: weight}}, got {value!r}")
    out: dict[int, float] = {}
    for key, weight in value.items():
        index = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TypeError(f"class_weight key {key!r} is not a class index")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise TypeError(f"class_weight[{key!r}] must be a number, got {weight!r}")
        out[index] = float(weight)
    return out


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
        typeConverter=_converter("model", _keras_model),
    )

    def getModel(self) -> Any:  # noqa: N802 - Spark ML's naming
        """The ``model`` Param's value."""
        return self.getOrDefault(self.model)


def _param(name: str, doc: str, convert: Callable[[Any], Any]) -> Param[Any]:
    return Param(Params._dummy(), name, doc, typeConverter=_converter(name, convert))


class KerasEstimatorParams(
    HasKerasModel,
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasThresholds,
):
    """The Params of :class:`~distkeras_async.estimator.KerasEstimator`, with their getters.

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
    numWorkers = _param(  # noqa: N815 - Spark ML's naming
        "numWorkers",
        "Spark tasks training in parallel (synchronous algorithms need as many slots)",
        _positive_int,
    )
    numEpochs = _param("numEpochs", "passes over the data", _positive_int)  # noqa: N815
    batchSize = _param("batchSize", "samples per local step", _positive_int)  # noqa: N815
    shuffle = _param(
        "shuffle",
        "shuffle rows between workers, and each worker's rows every epoch",
        _boolean,
    )
    seed = _param("seed", "the seed of the shuffles and of validationFraction's split", _seed)
    sampleWeightCol = _param(  # noqa: N815
        "sampleWeightCol", "a numeric column of per-row weights (not set: all 1)", _column
    )
    classWeight = _param(  # noqa: N815
        "classWeight",
        "{class index: weight} multiplying the weight of each class's rows",
        _class_weight,
    )
    validationCol = _param(  # noqa: N815
        "validationCol",
        "a boolean column: rows where it is true are validation data, not trained on",
        _column,
    )
    validationFraction = _param(  # noqa: N815
        "validationFraction",
        "a fraction of the rows held out (seeded) as validation data; 0 for none",
        _fraction,
    )
    inMemoryLimit = _param(  # noqa: N815
        "inMemoryLimit",
        "bytes up to which a worker holds its partition in memory; larger ones stream from "
        "a local file (0: always stream)",
        _seed,
    )
    shuffleWindow = _param(  # noqa: N815
        "shuffleWindow",
        "rows a streamed partition shuffles together (not set: about 32 MiB of rows)",
        _positive_int,
    )
    backend = _param(
        "backend",
        "the Keras backend the workers train on: tensorflow, jax or torch (not set: the "
        "driver's KERAS_BACKEND)",
        _backend,
    )
    useGpu = _param(  # noqa: N815
        "useGpu",
        "train (and predict) on the GPUs Spark gives each task (True), on the CPU only "
        "(False), or (not set) on the task's GPUs when spark.task.resource.gpu.amount is set",
        _boolean,
    )
    shards = _param(
        "shards",
        "parameter server processes the center is split across (not set: chosen from the "
        "model's size and the driver's cores; docs/scaling.md)",
        _positive_int,
    )
    overlap = _param(
        "overlap",
        "run each worker's exchange in the background while its next local steps run "
        "(asynchronous algorithms only; docs/scaling.md)",
        _boolean,
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
            numWorkers=2,
            numEpochs=1,
            batchSize=32,
            shuffle=False,
            seed=0,
            validationFraction=0.0,
            inMemoryLimit=IN_MEMORY_LIMIT,
            overlap=False,
        )

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

    def getNumWorkers(self) -> int:  # noqa: N802
        """The ``numWorkers`` Param's value."""
        return int(self.getOrDefault(self.numWorkers))

    def getNumEpochs(self) -> int:  # noqa: N802
        """The ``numEpochs`` Param's value."""
        return int(self.getOrDefault(self.numEpochs))

    def getBatchSize(self) -> int:  # noqa: N802
        """The ``batchSize`` Param's value."""
        return int(self.getOrDefault(self.batchSize))

    def getShuffle(self) -> bool:  # noqa: N802
        """The ``shuffle`` Param's value."""
        return bool(self.getOrDefault(self.shuffle))

    def getSeed(self) -> int:  # noqa: N802
        """The ``seed`` Param's value."""
        return int(self.getOrDefault(self.seed))

    def getBackend(self) -> str | None:  # noqa: N802
        """The ``backend`` Param's value, or None when it is not set (the driver's)."""
        value = self._optional(self.backend)
        return None if value is None else str(value)

    def getUseGpu(self) -> bool | None:  # noqa: N802
        """The ``useGpu`` Param's value, or None when it is not set (GPUs if tasks get any)."""
        value = self._optional(self.useGpu)
        return None if value is None else bool(value)

    def getShards(self) -> int | None:  # noqa: N802
        """The ``shards`` Param's value, or None when it is not set (the default count)."""
        value = self._optional(self.shards)
        return None if value is None else int(value)

    def getOverlap(self) -> bool:  # noqa: N802
        """The ``overlap`` Param's value (default False)."""
        return bool(self.getOrDefault(self.overlap))

    def getInMemoryLimit(self) -> int:  # noqa: N802
        """The ``inMemoryLimit`` Param's value."""
        return int(self.getOrDefault(self.inMemoryLimit))

    def getShuffleWindow(self) -> int | None:  # noqa: N802
        """The ``shuffleWindow`` Param's value, or None when it is not set."""
        value = self._optional(self.shuffleWindow)
        return None if value is None else int(value)

    def getSampleWeightCol(self) -> str | None:  # noqa: N802
        """The ``sampleWeightCol`` Param's value, or None when it is not set."""
        value = self._optional(self.sampleWeightCol)
        return None if value is None else str(value)

    def getClassWeight(self) -> dict[int, float] | None:  # noqa: N802
        """The ``classWeight`` Param's value, or None when it is not set."""
        value = self._optional(self.classWeight)
        return None if value is None else dict(value)

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

    def _optional(self, param: Param[Any]) -> Any:
        return self.getOrDefault(param) if self.isDefined(param) else None


def set_keywords(stage: Params, keywords: Mapping[str, Any]) -> None:
    """Set Params from constructor or ``setParams`` keywords: all of them, or none.

    Every value is checked before any is set, so a bad one leaves the stage unchanged.
    ``None`` leaves ``model`` and ``loss`` unset and means "none" for ``metrics`` and
    ``hyperparameters``; for any other Param it is refused (Spark's own ``_set`` would store
    it unchecked, and the stage could then not be loaded back).
    """
    empty: dict[str, Any] = {"metrics": [], "hyperparameters": {}}
    checked: dict[Param[Any], Any] = {}
    cleared: list[Param[Any]] = []
    for name, given in keywords.items():
        param = stage.getParam(name)
        if given is None and name in ("model", "loss"):
            cleared.append(param)
            continue
        value = empty[name] if given is None and name in empty else given
        try:
            checked[param] = param.typeConverter(value)
        except TypeError as exc:
            raise TypeError(f'Invalid param value given for param "{name}". {exc}') from exc
    for param in cleared:
        stage.clear(param)
    stage._paramMap.update(checked)
