"""The estimator's run-option Params are generated from the declared options, one for one.

Read from :mod:`distkeras_async.options` (not from the generating code), so a declaration
that gains a ``param`` name is checked here without a change: its Param, doc, default,
getter, setter, converter and keyword. Only the last test starts Spark (save and load).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from distkeras_async.ml import KerasEstimator, KerasModel
from distkeras_async.options import GROUPS, Declared, declared

OPTIONS = [item for item in declared(*GROUPS) if item.spec.param]
ids = [str(item.spec.param) for item in OPTIONS]

# Values the declared checks accept (other than the default) and refuse, for the options
# whose type alone does not say (a string or a mapping with a rule of its own).
VALID: dict[str, Any] = {
    "sampleWeightCol": "w",
    "classWeight": {1: 0.5},
    "onRetry": "restart",
    "backend": "tensorflow",
}
INVALID: dict[str, Any] = {
    "sampleWeightCol": "",
    "classWeight": {"a": 1.0},
    "onRetry": "sideways",
    "backend": "theano",
}


def valid_value(item: Declared) -> Any:
    """A value the option accepts, other than its default."""
    name = str(item.spec.param)
    if name in VALID:
        return VALID[name]
    if item.kind is bool:
        return item.default is not True
    if item.kind is int:
        return (item.default or 1) + 2
    if item.kind is float:
        return (item.default or 1.0) * 2.5
    pytest.fail(f"add a valid value for the Param {name!r} to VALID")


def invalid_value(item: Declared) -> Any:
    """A value the option's check refuses (not None: that is refused for every Param)."""
    name = str(item.spec.param)
    if name in INVALID:
        return INVALID[name]
    if item.kind is bool:
        return "x"
    if item.kind in (int, float):
        return -1
    pytest.fail(f"add an invalid value for the Param {name!r} to INVALID")


def accessor(prefix: str, item: Declared) -> str:
    name = str(item.spec.param)
    return prefix + name[0].upper() + name[1:]


def test_every_param_named_by_a_declaration_is_generated():
    assert {"numWorkers", "roundTimeout", "workerThreads", "overlap"} <= set(ids)
    est = KerasEstimator()
    for item in OPTIONS:
        param = est.getParam(str(item.spec.param))
        assert param.doc == item.spec.doc, item.name
        # Both stages carry the Params and getters; only the estimator has setters.
        for stage in (est, KerasModel()):
            assert stage.hasParam(param.name)
            assert callable(getattr(stage, accessor("get", item)))
        assert not hasattr(KerasModel, accessor("set", item))


@pytest.mark.parametrize("item", OPTIONS, ids=ids)
def test_the_param_default_is_the_declared_default(item):
    est = KerasEstimator()
    name = str(item.spec.param)
    get = getattr(est, accessor("get", item))
    if item.default is None:
        # Not set: the trainer chooses (and says so in the option's doc).
        assert not est.isDefined(name)
        assert get() is None
    else:
        assert est.getOrDefault(name) == item.default
        assert get() == item.default
        assert est.hasDefault(name) and not est.isSet(name)


@pytest.mark.parametrize("item", OPTIONS, ids=ids)
def test_getter_setter_and_keywords_round_trip_a_valid_value(item):
    name, value = str(item.spec.param), valid_value(item)
    est = KerasEstimator()
    assert getattr(est, accessor("set", item))(value) is est
    assert getattr(est, accessor("get", item))() == value
    assert KerasEstimator(**{name: value}).getOrDefault(name) == value
    assert KerasEstimator().setParams(**{name: value}).getOrDefault(name) == value
    # The value went through the declared check: what is stored is what the trainer takes.
    assert est.getOrDefault(name) == item.spec.check(value, name)


@pytest.mark.parametrize("item", OPTIONS, ids=ids)
def test_a_bad_value_is_a_type_error_naming_the_param_and_changes_nothing(item):
    name, bad = str(item.spec.param), invalid_value(item)
    est = KerasEstimator(**{name: valid_value(item)})
    before = est.extractParamMap()
    for attempt in (
        lambda: est.set(est.getParam(name), bad),
        lambda: getattr(est, accessor("set", item))(bad),
        lambda: est.setParams(**{name: bad}),
        lambda: est.setParams(numEpochs=7, **{name: bad}),  # all or nothing
        lambda: KerasEstimator(**{name: bad}),
    ):
        with pytest.raises(TypeError) as info:
            attempt()
        assert name in str(info.value)
    assert est.extractParamMap() == before


@pytest.mark.parametrize("item", OPTIONS, ids=ids)
def test_none_is_refused_by_the_converter_and_unsets_an_option_without_default(item):
    name = str(item.spec.param)
    est = KerasEstimator(**{name: valid_value(item)})
    with pytest.raises(TypeError, match=f"{name} cannot be None"):
        est.set(est.getParam(name), None)
    if item.default is None:
        # As the keyword's default says: None is "not set".
        assert getattr(est, accessor("set", item))(None).isSet(name) is False
        assert getattr(est, accessor("get", item))() is None
    else:
        with pytest.raises(TypeError, match=name):
            est.setParams(**{name: None})
        assert est.isSet(name)


def test_int_params_take_integral_floats_as_sparks_to_int_does():
    ints = [item for item in OPTIONS if item.kind is int]
    assert ints
    for item in ints:
        name = str(item.spec.param)
        value = KerasEstimator(**{name: 3.0}).getOrDefault(name)
        assert value == 3 and type(value) is int, name
        with pytest.raises(TypeError, match=name):
            KerasEstimator(**{name: 3.5})


def test_the_signature_lists_every_param_keyword_only_with_its_default():
    est = KerasEstimator()
    for signature in (inspect.signature(KerasEstimator), inspect.signature(est.setParams)):
        parameters = signature.parameters
        assert set(parameters) == {p.name for p in est.params}
        for name, parameter in parameters.items():
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
            expected = est.getOrDefault(name) if est.hasDefault(name) else None
            assert parameter.default == expected, name
    parameters = inspect.signature(KerasEstimator).parameters
    for item in OPTIONS:
        assert parameters[str(item.spec.param)].annotation == item.annotation


def test_an_unknown_keyword_or_a_positional_argument_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_workers'"):
        KerasEstimator(num_workers=2)
    est = KerasEstimator()
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        est.setParams(numEpochs=3, nope=1)
    assert not est.isSet("numEpochs")  # checked before anything is set
    with pytest.raises(TypeError):
        KerasEstimator(2)  # type: ignore[misc]


def test_generated_accessors_read_as_written_methods():
    item = next(o for o in OPTIONS if o.spec.param == "shuffleWindow")
    setter, getter = KerasEstimator.setShuffleWindow, KerasEstimator.getShuffleWindow
    assert (setter.__name__, getter.__name__) == ("setShuffleWindow", "getShuffleWindow")
    assert setter.__qualname__ == "KerasEstimator.setShuffleWindow"
    assert item.spec.doc in setter.__doc__ and item.spec.doc in getter.__doc__
    # The class docstring's Args section lists the generated Params too.
    for name in ids:
        assert f"\n        {name}: " in KerasEstimator.__doc__


def test_a_run_option_is_refused_as_a_hyperparameter():
    with pytest.raises(TypeError, match=r"'seed' is a run option.*'seed' Param"):
        KerasEstimator(hyperparameters={"seed": 3})
    with pytest.raises(TypeError, match="'master_port' is a run option"):
        KerasEstimator(hyperparameters={"master_port": 3})


def test_fit_passes_every_set_option_to_the_trainer_under_its_name(monkeypatch):
    import keras

    from distkeras_async.trainers import base

    captured: dict[str, Any] = {}

    class StopError(Exception):
        pass

    def trainer(*args: Any, **kwargs: Any) -> None:
        captured.update(kwargs)
        raise StopError

    monkeypatch.setattr(base, "DistributedTrainer", trainer)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    values = {str(o.spec.param): valid_value(o) for o in OPTIONS}
    est = KerasEstimator(
        model=model, loss="mse", hyperparameters={"communication_window": 3}, **values
    )
    with pytest.raises(StopError):
        est._fit(None)
    for item in OPTIONS:
        assert captured[item.name] == item.spec.check(values[str(item.spec.param)], item.name)
    assert captured["communication_window"] == 3
    assert captured["master_port"] == 0
    # An option without a default that is not set is left to the trainer's default.
    captured.clear()
    unset = [o for o in OPTIONS if o.default is None]
    with pytest.raises(StopError):
        est.setParams(**{str(o.spec.param): None for o in unset})._fit(None)
    assert unset and not {o.name for o in unset} & set(captured)


@pytest.mark.slow
def test_new_params_save_and_load_and_an_older_stage_loads_with_defaults(spark, tmp_path):
    values = {str(o.spec.param): valid_value(o) for o in OPTIONS}
    est = KerasEstimator(loss="mse", **values)
    est.save(str(tmp_path / "e"))
    loaded = KerasEstimator.load(str(tmp_path / "e"))
    for name, value in values.items():
        assert loaded.getOrDefault(name) == est.getOrDefault(name) == value, name
    # A stage saved before the newer Params existed lists none of them: it loads, and they
    # take their defaults.
    newer = {"roundTimeout", "idleTimeout", "onRetry", "allowNonfiniteInputs", "checkLearning"}
    (part,) = [p for p in (tmp_path / "e" / "metadata").glob("part-*")]
    metadata = json.loads(part.read_text())
    for section in ("paramMap", "defaultParamMap"):
        for name in [*newer, "workerThreads"]:
            metadata[section].pop(name, None)
    part.write_text(json.dumps(metadata))
    for crc in (tmp_path / "e" / "metadata").glob(".part-*.crc"):
        crc.unlink()  # Hadoop would refuse the edited file against its old checksum
    older = KerasEstimator.load(str(tmp_path / "e"))
    assert older.getNumWorkers() == values["numWorkers"]
    assert older.getWorkerThreads() is None
    for item in OPTIONS:
        if item.spec.param in newer:
            assert older.getOrDefault(str(item.spec.param)) == item.default
