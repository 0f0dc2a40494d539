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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import (
    AlgorithmError,
    HyperparameterError,
    PluginError,
    UnknownAlgorithmError,
)
from distkeras_async.rules import DeltaAlgorithm
from distkeras_async.testing import (
    apply_updates,
    check_declarations,
    check_server_rule,
    check_state,
    check_worker_rule,
)

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


# -- the battery --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_name_matches_registry_name(name: str) -> None:
    algorithm_cls = registry.get(name)
    assert isinstance(algorithm_cls, type)
    assert issubclass(algorithm_cls, Algorithm)
    assert algorithm_cls.name == name
    assert name == name.lower()
    assert " " not in name


def test_declarations(cls: type[Algorithm]) -> None:
    """Name, docstring, mode and hyperparameters (the plugin kit's first check)."""
    check_declarations(cls)


def test_server_rule(cls: type[Algorithm]) -> None:
    """Dtype and shape kept, the center never written, writes_all and linear promises held."""
    check_server_rule(cls)


def test_rule_state_survives_a_checkpoint_round_trip(cls: type[Algorithm]) -> None:
    """A worker or server restored from saved state continues exactly (the kit's check)."""
    check_state(cls)


def test_worker_rule(cls: type[Algorithm]) -> None:
    """An idle worker leaves the center; a trained one moves it its way."""
    check_worker_rule(cls)


def test_module_docstring_cites_paper_or_states_rule(cls: type[Algorithm]) -> None:
    module = inspect.getmodule(cls)
    assert module is not None
    doc = module.__doc__
    assert doc is not None and doc.strip(), f"{module.__name__} has no module docstring"
    cites_paper = re.search(r"(19|20)\d\d|arXiv|et al\.", doc) is not None
    states_rule = re.search(r"\\leftarrow|<-|\.\. math::|\u2190", doc) is not None
    assert cites_paper or states_rule, f"{module.__name__}'s docstring neither cites nor states"


def test_communication_window_is_a_hyperparameter(cls: type[Algorithm]) -> None:
    assert "communication_window" in cls.hyperparameters
    assert cls.hyperparameters["communication_window"].kind is int
    assert cls(communication_window=7).communication_window == 7
    with pytest.raises(HyperparameterError, match="communication_window"):
        cls(communication_window=0)


def test_the_real_server_applies_exactly_the_rule(cls: type[Algorithm], make_server, connect):
    """Through sockets, the session, the queue and the in-place or spare-buffer path, the
    server's center is bit for bit the rule applied directly (and it moved)."""
    center = f32(1, 2, 3, 4)
    updates = [f32(0.5, -1, 2, 0.25), f32(-0.25, 0.5, 1, 3)]
    expected = apply_updates(cls(), center, updates)
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


def test_zero_update_rules(cls: type[Algorithm]) -> None:
    """Zero deltas or elastic differences, or a round of identical weights, change nothing."""
    algorithm = cls()
    center = f32(1, 2, 3, 4)
    if cls.name == "averaging":
        result = apply_updates(algorithm, center, [center.copy(), center.copy()])
    else:
        zero = np.zeros(4, np.float32)
        result = apply_updates(algorithm, center, [zero, zero.copy()])
    np.testing.assert_array_equal(result, center)


def test_downpour_zero_delta_keeps_center() -> None:
    center = apply_updates(registry.get("downpour")(), f32(1, 2, 3), [f32(0, 0, 0)])
    np.testing.assert_array_equal(center, f32(1, 2, 3))


def test_averaging_identical_weights_gives_those_weights() -> None:
    averaging = registry.get("averaging")()
    weights = f32(0.1, -7.3, 1e6, 3.25)
    for count in (1, 2, 3, 5):
        zeros = np.zeros(4, dtype=np.float32)
        center = apply_updates(averaging, zeros, [weights.copy() for _ in range(count)])
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

    def server_update(self, out, center, updates, metas) -> None:
        out += np.float32(0.5) * updates[0]


def test_register_runtime_class() -> None:
    assert registry.register(HalfDownpour) is HalfDownpour
    try:
        assert "test-half-downpour" in registry.available()
        assert registry.get("test-half-downpour") is HalfDownpour
        algorithm = registry.resolve("test-half-downpour", communication_window=2)
        assert isinstance(algorithm, HalfDownpour)
        assert algorithm.communication_window == 2
        center = apply_updates(algorithm, f32(1, 1), [f32(2, -4)])
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


def test_every_builtin_promises_a_bounded_linear_update():
    for name in BUILTINS:
        assert registry.get(name)().promises_linear_update(), name
