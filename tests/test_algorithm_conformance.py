"""One conformance battery run over every registered algorithm, plus the registry itself.

Like optax's shared tests, each check here holds for *any* algorithm, built-in or plugin:
a new algorithm registered through the entry-point group is picked up automatically.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack
import numpy as np
import pytest

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm, Hyperparameter, UpdateMeta
from distkeras_async.errors import (
    AlgorithmError,
    HyperparameterError,
    PluginError,
    UnknownAlgorithmError,
)
from distkeras_async.rules import DeltaAlgorithm

NAMES = registry.available()
BUILTINS = {"downpour", "adag", "dynsgd", "easgd", "aeasgd", "eamsgd", "averaging"}


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_builtins_are_registered() -> None:
    assert set(NAMES) >= BUILTINS
    assert sorted(NAMES) == NAMES


@pytest.fixture(params=NAMES)
def cls(request: pytest.FixtureRequest) -> type[Algorithm]:
    return registry.get(request.param)


# -- a minimal in-memory server for the worker rules ------------------------------------


class FakeServer:
    """A ServerHandle for one worker; synchronous rounds have just this worker."""

    def __init__(self, algorithm: Algorithm, center: np.ndarray) -> None:
        self.algorithm = algorithm
        self.center = center.astype(np.float32).copy()
        self.version = 0
        self.pulled_version = 0
        self.updates: list[np.ndarray] = []

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        self.pulled_version = self.version
        if out is None:
            return self.center.copy()
        assert out.dtype == np.float32 and out.shape == self.center.shape
        np.copyto(out, self.center)
        return out

    def commit(self, update: np.ndarray) -> None:
        assert isinstance(update, np.ndarray)
        assert update.dtype == np.float32, update.dtype
        assert update.shape == self.center.shape
        self.updates.append(update.copy())
        meta = UpdateMeta(0, self.pulled_version, self.version)
        if self.algorithm.synchronous:
            self.algorithm.server_apply_round(self.center, [update.copy()], [meta])
        else:
            self.algorithm.server_apply(self.center, update.copy(), meta)
        self.version += 1

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        self.commit(update)
        return self.pull(out)


# -- the battery --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_name_matches_registry_name(name: str) -> None:
    algorithm_cls = registry.get(name)
    assert isinstance(algorithm_cls, type)
    assert issubclass(algorithm_cls, Algorithm)
    assert algorithm_cls.name == name
    assert name == name.lower()
    assert " " not in name


def test_class_has_docstring(cls: type[Algorithm]) -> None:
    assert cls.__doc__ is not None
    assert cls.__doc__.strip()
    # Not just inherited from a base class.
    assert "__doc__" in cls.__dict__


def test_module_docstring_cites_paper_or_states_rule(cls: type[Algorithm]) -> None:
    module = inspect.getmodule(cls)
    assert module is not None
    doc = module.__doc__
    assert doc is not None and doc.strip(), f"{module.__name__} has no module docstring"
    cites_paper = re.search(r"(19|20)\d\d|arXiv|et al\.", doc) is not None
    states_rule = re.search(r"\\leftarrow|<-|\.\. math::|\u2190", doc) is not None
    assert cites_paper or states_rule, f"{module.__name__}'s docstring neither cites nor states"


def test_synchronous_is_bool(cls: type[Algorithm]) -> None:
    assert type(cls.synchronous) is bool
    assert type(cls.allow_nonfinite) is bool


def test_constructs_with_defaults(cls: type[Algorithm]) -> None:
    algorithm = cls()
    assert isinstance(algorithm, Algorithm)
    for key, spec in cls.hyperparameters.items():
        assert getattr(algorithm, key) == spec.default
    assert type(algorithm).__name__ in repr(algorithm)


def test_settings_are_msgpack_friendly_scalars(cls: type[Algorithm]) -> None:
    settings = cls().settings
    assert set(settings) == set(cls.hyperparameters)
    for key, value in settings.items():
        assert isinstance(key, str)
        assert type(value) in (int, float, bool, str), (key, type(value))
    assert msgpack.unpackb(msgpack.packb(settings)) == settings
    # The settings a server sends rebuild an equal algorithm in the worker.
    assert cls(**settings).settings == settings


def test_every_hyperparameter_is_documented(cls: type[Algorithm]) -> None:
    assert cls.hyperparameters
    for key, spec in cls.hyperparameters.items():
        assert isinstance(spec, Hyperparameter)
        assert key.isidentifier() and key == key.lower()
        assert spec.doc.strip(), f"hyperparameter {key!r} of {cls.name!r} has no doc"
        assert spec.validate(key, spec.default) == spec.default


def test_communication_window_is_a_hyperparameter(cls: type[Algorithm]) -> None:
    assert "communication_window" in cls.hyperparameters
    assert cls.hyperparameters["communication_window"].kind is int
    assert cls(communication_window=7).communication_window == 7
    with pytest.raises(HyperparameterError, match="communication_window"):
        cls(communication_window=0)


def test_unknown_hyperparameter_rejected(cls: type[Algorithm]) -> None:
    with pytest.raises(HyperparameterError, match="no_such_knob") as info:
        cls(no_such_knob=1)
    assert "communication_window" in str(info.value)


def test_implements_the_server_rule_for_its_mode(cls: type[Algorithm]) -> None:
    if cls.synchronous:
        assert cls.server_apply_round is not Algorithm.server_apply_round
    else:
        assert cls.server_apply is not Algorithm.server_apply
    assert cls.worker_exchange is not Algorithm.worker_exchange


def _apply(algorithm: Algorithm, center: np.ndarray, updates: Sequence[np.ndarray]) -> np.ndarray:
    """Apply ``updates`` (a round if synchronous, one by one otherwise) to a copy of center."""
    result = center.copy()
    if algorithm.synchronous:
        metas = [UpdateMeta(w, 0, 0) for w in range(len(updates))]
        algorithm.server_apply_round(result, [u.copy() for u in updates], metas)
    else:
        for version, update in enumerate(updates):
            algorithm.server_apply(result, update.copy(), UpdateMeta(0, version, version))
    return result


def test_the_real_server_applies_exactly_the_rule(cls: type[Algorithm], make_server, connect):
    """Through sockets, the session, the queue and the in-place or spare-buffer path, the
    server's center is bit for bit the rule applied directly (and it moved)."""
    center = f32(1, 2, 3, 4)
    updates = [f32(0.5, -1, 2, 0.25), f32(-0.25, 0.5, 1, 3)]
    expected = _apply(cls(), center, updates)
    assert not np.array_equal(expected, center) and np.isfinite(expected).all()
    if cls.synchronous:
        server = make_server(weights=[center.copy()], algorithm=cls, num_workers=2)
        clients = [connect(server, w) for w in range(2)]
        threads = [
            threading.Thread(target=c.commit_pull, args=(u,))
            for c, u in zip(clients, updates, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    else:
        server = make_server(weights=[center.copy()], algorithm=cls, num_workers=1)
        client = connect(server)
        for update in updates:
            client.pull()  # staleness 0, as _apply assumes
            client.commit(update)
    assert server.center_flat.tobytes() == expected.tobytes()


def test_server_rule_keeps_dtype_shape_and_works_in_place(cls: type[Algorithm]) -> None:
    algorithm = cls()
    center = np.linspace(-1, 1, 6, dtype=np.float32)
    original = center
    updates = [np.full(6, 0.5, dtype=np.float32), np.arange(6, dtype=np.float32)]
    if algorithm.synchronous:
        algorithm.server_apply_round(
            center, [u.copy() for u in updates], [UpdateMeta(0, 0, 0), UpdateMeta(1, 0, 0)]
        )
    else:
        for update in updates:
            algorithm.server_apply(center, update.copy(), UpdateMeta(0, 0, 0))
    assert center is original
    assert center.dtype == np.float32
    assert center.shape == (6,)
    assert center.flags.c_contiguous


def test_idle_worker_leaves_center_unchanged(cls: type[Algorithm]) -> None:
    """A worker that did not move commits an update that leaves the center where it was."""
    algorithm = cls(communication_window=2)
    center = f32(1.5, -2, 0.25, 8)
    server = FakeServer(cls(communication_window=2), center)
    weights = algorithm.worker_start(np.zeros(4, dtype=np.float32), server)
    assert weights.dtype == np.float32 and weights.shape == (4,)
    np.testing.assert_array_equal(weights, center)
    weights = algorithm.worker_exchange(weights, server)
    np.testing.assert_array_equal(server.center, center)
    np.testing.assert_array_equal(weights, center)
    weights = algorithm.worker_finish(weights, server)
    np.testing.assert_array_equal(server.center, center)
    np.testing.assert_array_equal(weights, center)
    assert weights.dtype == np.float32 and weights.shape == (4,)
    assert server.updates, "the worker rule never committed"


def test_worker_rule_moves_center_towards_trained_worker(cls: type[Algorithm]) -> None:
    """After local progress, an exchange moves the center in the direction of the worker."""
    algorithm = cls(communication_window=2)
    center = f32(0, 0, 0, 0)
    server = FakeServer(cls(communication_window=2), center)
    weights = algorithm.worker_start(center.copy(), server)
    trained = weights + f32(1, -1, 2, 0)
    if algorithm.acts_every_step():
        # Zero gradient: the local step changes nothing, the momentum stays zero.
        trained = algorithm.worker_step(trained, lambda w: w.copy())
    new = algorithm.worker_exchange(trained.copy(), server)
    assert new.dtype == np.float32 and new.shape == (4,)
    moved = server.center - center
    assert np.all(np.sign(moved) == np.sign(f32(1, -1, 2, 0)))


def test_zero_update_rules(cls: type[Algorithm]) -> None:
    """Zero deltas or elastic differences, or a round of identical weights, change nothing."""
    algorithm = cls()
    center = f32(1, 2, 3, 4)
    if cls.name == "averaging":
        result = _apply(algorithm, center, [center.copy(), center.copy()])
    else:
        result = _apply(algorithm, center, [np.zeros(4, np.float32), np.zeros(4, np.float32)])
    np.testing.assert_array_equal(result, center)


def test_downpour_zero_delta_keeps_center() -> None:
    center = f32(1, 2, 3)
    registry.get("downpour")().server_apply(center, f32(0, 0, 0), UpdateMeta(0, 0, 3))
    np.testing.assert_array_equal(center, f32(1, 2, 3))


def test_averaging_identical_weights_gives_those_weights() -> None:
    averaging = registry.get("averaging")()
    weights = f32(0.1, -7.3, 1e6, 3.25)
    for count in (1, 2, 3, 5):
        center = np.zeros(4, dtype=np.float32)
        metas = [UpdateMeta(w, 0, 0) for w in range(count)]
        averaging.server_apply_round(center, [weights.copy() for _ in range(count)], metas)
        np.testing.assert_allclose(center, weights, rtol=1e-6)


# -- the registry ---------------------------------------------------------------------


def test_get_unknown_name_lists_available() -> None:
    with pytest.raises(UnknownAlgorithmError) as info:
        registry.get("no-such-algorithm")
    message = str(info.value)
    assert "no-such-algorithm" in message
    for name in NAMES:
        assert name in message
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, AlgorithmError)


class HalfDownpour(DeltaAlgorithm):
    """DOWNPOUR that applies half of every worker's change."""

    name = "test-half-downpour"
    synchronous = False

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        center += np.float32(0.5) * update


def test_register_runtime_class() -> None:
    assert registry.register(HalfDownpour) is HalfDownpour
    try:
        assert "test-half-downpour" in registry.available()
        assert registry.get("test-half-downpour") is HalfDownpour
        algorithm = registry.resolve("test-half-downpour", communication_window=2)
        assert isinstance(algorithm, HalfDownpour)
        assert algorithm.communication_window == 2
        center = f32(1, 1)
        algorithm.server_apply(center, f32(2, -4), UpdateMeta(0, 0, 0))
        np.testing.assert_array_equal(center, f32(2, -1))
        with pytest.raises(PluginError, match="test-half-downpour"):
            registry.register(HalfDownpour)
        assert registry.register(HalfDownpour, replace=True) is HalfDownpour
    finally:
        registry.unregister("test-half-downpour")
    assert "test-half-downpour" not in registry.available()
    with pytest.raises(UnknownAlgorithmError):
        registry.get("test-half-downpour")


def test_register_name_of_an_entry_point_rejected() -> None:
    class Impostor(DeltaAlgorithm):
        """Claims a built-in's name."""

        name = "downpour"

    with pytest.raises(PluginError, match="downpour"):
        registry.register(Impostor)
    assert registry.get("downpour") is not Impostor


def test_register_rejects_non_algorithms_and_nameless_classes() -> None:
    class Nameless(DeltaAlgorithm):
        """No name."""

    with pytest.raises(PluginError):
        registry.register(object)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="name"):
        registry.register(Nameless)


def test_unregister_unknown_is_harmless() -> None:
    registry.unregister("never-registered")


def test_resolve_name_class_and_instance() -> None:
    downpour_cls = registry.get("downpour")
    by_name = registry.resolve("downpour", communication_window=3)
    assert type(by_name) is downpour_cls
    assert by_name.communication_window == 3

    easgd_cls = registry.get("easgd")
    by_class = registry.resolve(easgd_cls, learning_rate=0.1, rho=2.0)
    assert type(by_class) is easgd_cls
    assert by_class.settings["learning_rate"] == 0.1
    assert by_class.settings["rho"] == 2.0

    instance = downpour_cls(communication_window=9)
    assert registry.resolve(instance) is instance
    with pytest.raises(HyperparameterError):
        registry.resolve(instance, communication_window=2)


def test_resolve_errors() -> None:
    with pytest.raises(UnknownAlgorithmError):
        registry.resolve("no-such-algorithm")
    with pytest.raises(HyperparameterError, match="bogus"):
        registry.resolve("adag", bogus=1)
    with pytest.raises(PluginError):
        registry.resolve(42)  # type: ignore[arg-type]


# -- entry-point plugins ----------------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """A folder on sys.path where tests write fake distributions; cleans modules after."""
    modules: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, modules
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def make_distribution(
    root: Path,
    name: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
    created: list[str],
) -> None:
    dist_info = root / f"{name}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8"
    )
    lines = ["[distkeras_async.algorithms]"]
    lines += [f"{key} = {value}" for key, value in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        created.append(module)
    importlib.invalidate_caches()


def test_broken_plugins_raise_plugin_error(plugin_dir: tuple[Path, list[str]]) -> None:
    root, created = plugin_dir
    make_distribution(
        root,
        "brokenplugin",
        {
            "broken-import": "brokenplugin_fails:Algo",
            "not-an-algorithm": "brokenplugin_objects:NotAnAlgorithm",
            "misnamed": "brokenplugin_objects:Misnamed",
        },
        {
            "brokenplugin_fails": """
                raise ImportError("brokenplugin needs a missing dependency")
            """,
            "brokenplugin_objects": """
                from distkeras_async.algorithm import Algorithm

                class NotAnAlgorithm:
                    name = "not-an-algorithm"

                class Misnamed(Algorithm):
                    '''An algorithm whose name is not its entry point's.'''
                    name = "something-else"
            """,
        },
        created,
    )
    available = registry.available()
    assert {"broken-import", "not-an-algorithm", "misnamed"} <= set(available)

    with pytest.raises(PluginError) as info:
        registry.get("broken-import")
    message = str(info.value)
    assert "broken-import" in message
    assert "brokenplugin" in message
    assert "brokenplugin_fails:Algo" in message
    assert "ImportError" in message
    assert "missing dependency" in message

    with pytest.raises(PluginError) as info:
        registry.get("not-an-algorithm")
    message = str(info.value)
    assert "not-an-algorithm" in message
    assert "'brokenplugin'" in message
    assert "subclass" in message

    with pytest.raises(PluginError) as info:
        registry.get("misnamed")
    message = str(info.value)
    assert "misnamed" in message and "something-else" in message
    assert "brokenplugin" in message

    with pytest.raises(PluginError):
        registry.resolve("broken-import")

    # The built-ins are unaffected by a broken neighbour.
    assert registry.get("downpour").name == "downpour"


def test_plugin_error_is_algorithm_error() -> None:
    assert issubclass(PluginError, AlgorithmError)
    assert issubclass(UnknownAlgorithmError, AlgorithmError)


def test_working_plugin_is_discovered(plugin_dir: tuple[Path, list[str]]) -> None:
    root, created = plugin_dir
    make_distribution(
        root,
        "goodplugin",
        {"good-plugin-rule": "goodplugin_rules:GoodRule"},
        {
            "goodplugin_rules": """
                '''A plugin rule (Example et al. 2024).'''
                from distkeras_async.rules import DeltaAlgorithm

                class GoodRule(DeltaAlgorithm):
                    '''DOWNPOUR under another name.'''
                    name = "good-plugin-rule"
            """
        },
        created,
    )
    assert "good-plugin-rule" in registry.available()
    loaded = registry.get("good-plugin-rule")
    assert loaded.__name__ == "GoodRule"
    assert loaded.name == "good-plugin-rule"
    assert registry.resolve("good-plugin-rule", communication_window=4).communication_window == 4


def test_plugin_reusing_a_name_with_another_target(plugin_dir: tuple[Path, list[str]]) -> None:
    root, created = plugin_dir
    make_distribution(
        root,
        "dupplugin",
        {"downpour": "dupplugin_rules:OtherDownpour"},
        {
            "dupplugin_rules": """
                from distkeras_async.rules import DeltaAlgorithm

                class OtherDownpour(DeltaAlgorithm):
                    '''A second algorithm claiming the name downpour.'''
                    name = "downpour"
            """
        },
        created,
    )
    with pytest.raises(PluginError) as info:
        registry.get("downpour")
    message = str(info.value)
    assert "downpour" in message
    assert "dupplugin" in message
    assert "dupplugin_rules:OtherDownpour" in message
    assert "distkeras-async" in message
    assert "distkeras_async.algorithms.downpour:Downpour" in message


# -- the server's out-of-place and in-place forms ----------------------------------------


def _server_results(algorithm: Algorithm, center: np.ndarray, updates: list[np.ndarray]):
    """The next center three ways: in place (server_apply*), into ``out``, and aliased."""
    metas = [UpdateMeta(w, 3, 5) for w in range(len(updates))]
    in_place = center.copy()
    out = np.full_like(center, np.nan)
    aliased = center.copy()
    if algorithm.synchronous:
        algorithm.server_apply_round(in_place, [u.copy() for u in updates], metas)
        algorithm.apply_round(out, center.copy(), [u.copy() for u in updates], metas)
        if algorithm.declares_linear_update():
            algorithm.apply_round(aliased, aliased, [u.copy() for u in updates], metas)
    else:
        algorithm.server_apply(in_place, updates[0].copy(), metas[0])
        algorithm.apply_update(out, center.copy(), updates[0].copy(), metas[0])
        if algorithm.declares_linear_update():
            algorithm.apply_update(aliased, aliased, updates[0].copy(), metas[0])
    return in_place, out, aliased


def test_the_server_forms_of_a_rule_agree(cls):
    """apply_update/apply_round (what the server calls) match the in-place rule exactly, and
    a rule that promises a bounded linear update gives the same result with out = center and
    stays within max|center| + sum max|update|."""
    rng = np.random.default_rng(7)
    algorithm = cls()
    center = rng.normal(size=64).astype(np.float32)
    updates = [rng.normal(size=64).astype(np.float32) for _ in range(3 if cls.synchronous else 1)]
    in_place, out, aliased = _server_results(algorithm, center, updates)
    np.testing.assert_array_equal(out, in_place)
    if cls.declares_linear_update():
        np.testing.assert_array_equal(aliased, in_place)
        bound = np.max(np.abs(center)) + sum(np.max(np.abs(u)) for u in updates)
        assert np.max(np.abs(in_place)) <= bound * (1 + 1e-6)


def test_every_builtin_promises_a_bounded_linear_update():
    for name in BUILTINS:
        assert registry.get(name).declares_linear_update(), name
