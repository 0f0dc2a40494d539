"""Every run option is declared once, and every surface exposes what it declares.

The declarations (``distkeras_async.options``) are enumerated, never listed here: a new
option is checked by these tests without touching them. The classic positional orders are
written out below on purpose: they are the promise of ``docs/migration.md``.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import warnings

import pytest

from distkeras_async import options
from distkeras_async.options import GROUPS, Options, declared
from distkeras_async.trainers import (
    ADAG,
    AEASGD,
    DOWNPOUR,
    EAMSGD,
    EASGD,
    AsynchronousDistributedTrainer,
    AsynchronousEAMSGD,
    AsynchronousEASGD,
    AveragingTrainer,
    DistributedTrainer,
    DynSGD,
    SingleTrainer,
    SynchronizedDistributedTrainer,
)
from distkeras_async.worker.plan import WorkerPlan

PACKAGE = pathlib.Path(options.__file__).resolve().parents[1]
ALL = list(declared(*GROUPS))
TRAINERS = [
    DistributedTrainer,
    SynchronizedDistributedTrainer,
    AsynchronousDistributedTrainer,
    SingleTrainer,
    EASGD,
    AsynchronousEASGD,
    AsynchronousEAMSGD,
    DOWNPOUR,
    ADAG,
    DynSGD,
    AveragingTrainer,
]

HEAD = ["keras_model", "worker_optimizer", "loss", "metrics"]
# docs/migration.md: the classic signatures, positional order included.
CLASSIC_ORDER = {
    DistributedTrainer: [
        *HEAD,
        *("num_workers", "batch_size", "features_col", "label_col", "num_epoch", "master_port"),
    ],
    SingleTrainer: [*HEAD, "num_epoch", "batch_size", "features_col", "label_col"],
    EASGD: [
        *HEAD,
        *("num_workers", "features_col", "label_col", "rho", "learning_rate", "batch_size"),
        *("num_epoch", "master_port"),
    ],
    AsynchronousEASGD: [
        *HEAD,
        *("num_workers", "batch_size", "features_col", "label_col", "communication_window"),
        *("rho", "learning_rate", "master_port", "num_epoch"),
    ],
    AsynchronousEAMSGD: [
        *HEAD,
        *("num_workers", "batch_size", "features_col", "label_col", "communication_window"),
        *("rho", "learning_rate", "momentum", "master_port", "num_epoch"),
    ],
    DOWNPOUR: [
        *HEAD,
        *("num_workers", "batch_size", "features_col", "label_col", "communication_window"),
        *("master_port", "num_epoch", "learning_rate"),
    ],
    ADAG: [
        *HEAD,
        *("num_workers", "batch_size", "features_col", "label_col", "num_epoch"),
        *("communication_window", "master_port"),
    ],
    DynSGD: [
        *HEAD,
        *("num_workers", "batch_size", "features_col", "label_col", "num_epoch"),
        *("communication_window", "master_port"),
    ],
    AveragingTrainer: [
        *HEAD,
        *("features_col", "label_col", "num_epoch", "batch_size", "num_workers"),
    ],
}


@pytest.fixture(scope="module")
def model():
    from distkeras_async.datasets import digits_mlp

    return digits_mlp()


# -- the declarations ------------------------------------------------------------------


def test_every_option_is_declared_once_with_a_doc():
    names = [item.name for item in ALL]
    assert len(names) == len(set(names)), "an option is declared in two groups"
    for item in ALL:
        assert item.spec.doc and not item.spec.doc.endswith("."), item.name
        assert item.spec.check is not None, f"{item.name} declares no check"


@pytest.mark.parametrize("item", ALL, ids=lambda item: item.name)
def test_every_option_refuses_a_bad_value_naming_itself(item):
    with pytest.raises((ValueError, TypeError), match=item.name):
        item.group(**{item.name: object()})


@pytest.mark.parametrize("item", ALL, ids=lambda item: item.name)
def test_every_default_passes_its_own_check(item):
    value = getattr(item.group(), item.name)
    if item.name == "features_col" or item.name == "label_col":
        assert value == (item.default,)
    else:
        assert value == item.default


def test_options_from_keywords_sorts_options_from_hyperparameters():
    grouped, rest = Options.from_keywords(
        {"shuffle_window": 64, "round_timeout": 5, "rho": 2.0, "checkpoint_path": "/tmp/c"}
    )
    assert grouped.data.shuffle_window == 64
    assert grouped.timeouts.round_timeout == 5.0
    assert grouped.checkpoints.checkpoint_interval == 60.0  # the default with a path
    assert rest == {"rho": 2.0}


def test_tls_needs_both_halves_and_a_context_cannot_be_sharded():
    import ssl

    with pytest.raises(ValueError, match="tls_ca"):
        options.ServerOptions(ssl_context=("cert.pem", "key.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ValueError, match="certificate_file, key_file"):
        options.ServerOptions(ssl_context=context, shards=2)


# -- the trainers ------------------------------------------------------------------------


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda t: t.__name__)
def test_every_trainer_signature_lists_every_option(trainer):
    parameters = inspect.signature(trainer).parameters
    fixed = trainer.spec.fixed
    for item in ALL:
        if item.name in fixed:
            assert item.name not in parameters
            continue
        assert item.name in parameters, f"{trainer.__name__} does not take {item.name}"
        default = trainer.spec.defaults.get(item.name, item.default)
        assert parameters[item.name].default == default
        assert parameters[item.name].annotation == item.annotation
    assert list(parameters)[-1] == "hyperparameters"
    assert parameters["hyperparameters"].kind is inspect.Parameter.VAR_KEYWORD


@pytest.mark.parametrize("trainer", list(CLASSIC_ORDER), ids=lambda t: t.__name__)
def test_the_classic_positional_order_is_kept(trainer):
    parameters = inspect.signature(trainer).parameters.values()
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == CLASSIC_ORDER[trainer]


def test_aliases_are_the_same_classes():
    assert AEASGD is AsynchronousEASGD and EAMSGD is AsynchronousEAMSGD
    assert issubclass(DOWNPOUR, AsynchronousDistributedTrainer)
    assert issubclass(EASGD, SynchronizedDistributedTrainer)


def test_a_user_subclass_keeps_its_own_signature(model):
    class Mine(DOWNPOUR):
        def __init__(self, keras_model, *, window: int = 3) -> None:
            super().__init__(keras_model, "adam", "mse", communication_window=window)

    class Configured(DOWNPOUR):
        """Only a docstring: the generated signature still applies."""

    assert list(inspect.signature(Mine).parameters) == ["keras_model", "window"]
    assert Mine(model, window=4).hyperparameters == {"communication_window": 4}
    assert inspect.signature(Configured) == inspect.signature(DOWNPOUR)


def test_a_positional_classic_call_binds_by_the_classic_order(model):
    trainer = DOWNPOUR(
        model, "adam", "categorical_crossentropy", ["accuracy"], 3, 64, "f", "l", 7, 0, 2
    )
    assert (trainer.num_workers, trainer.batch_size, trainer.num_epoch) == (3, 64, 2)
    assert trainer.features_col == ("f",) and trainer.label_col == ("l",)
    assert trainer.options.server.master_port == 0
    assert trainer.hyperparameters == {"communication_window": 7}
    easgd = EASGD(model, "adam", "categorical_crossentropy", ["accuracy"], 2, "f", "l", 3.0, 0.05)
    assert easgd.hyperparameters == {"rho": 3.0, "learning_rate": 0.05, "communication_window": 5}
    assert easgd.synchronous


def test_classic_defaults_differ_where_the_table_says(model):
    assert DOWNPOUR(model, "adam", "mse").batch_size == 1000
    assert AsynchronousEAMSGD(model, "adam", "mse").hyperparameters["momentum"] == 0.7
    assert ADAG(model, "adam", "mse", num_workers=3).hyperparameters == {"communication_window": 3}
    single = SingleTrainer(model, "adam", "mse")
    assert single.num_workers == 1 and single.options.server.master_port == 0
    assert single.hyperparameters == {"communication_window": 100}


def test_a_named_trainer_is_its_algorithm(model):
    with pytest.raises(TypeError, match="DOWNPOUR sets algorithm='downpour'"):
        DOWNPOUR(model, "adam", "mse", algorithm="dynsgd")
    assert "algorithm" not in inspect.signature(ADAG).parameters


def test_a_grandchild_without_init_shows_its_parent_s_init():
    class Parent(DistributedTrainer):
        def __init__(self, keras_model, *, window: int = 3) -> None:
            super().__init__(keras_model, "adam", "mse", communication_window=window)

    class Child(Parent):
        pass

    assert list(inspect.signature(Child).parameters) == ["keras_model", "window"]


def test_a_hand_made_plan_takes_only_what_a_plan_carries():
    from distkeras_async.worker.plan import Endpoint

    endpoint = Endpoint("127.0.0.1", (5000,), bytes(32))
    plan = WorkerPlan.create("{}", "downpour", endpoint, epochs=3, batch_size=16)
    assert plan.epochs == 3 and plan.run.num_epoch == 3 and plan.run.batch_size == 16
    with pytest.raises(TypeError, match=r"\['num_epoch'\].*epochs="):
        WorkerPlan.create("{}", "downpour", endpoint, num_epoch=3)
    with pytest.raises(TypeError, match="round_timeout"):
        WorkerPlan.create("{}", "downpour", endpoint, round_timeout=3.0)


def test_a_class_s_own_settings_cannot_be_passed(model):
    with pytest.raises(TypeError, match="SingleTrainer sets num_workers=1"):
        SingleTrainer(model, "adam", "mse", num_workers=3)
    with pytest.raises(TypeError, match="multiple values for argument 'num_workers'"):
        DOWNPOUR(model, "adam", "mse", ["accuracy"], 2, num_workers=3)


def test_downpour_warns_that_its_learning_rate_does_nothing(model):
    with pytest.warns(UserWarning, match="learning_rate has no effect") as caught:
        DOWNPOUR(model, "adam", "mse", learning_rate=0.5)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DOWNPOUR(model, "adam", "mse", learning_rate=0.01)


def test_a_bad_option_fails_in_the_constructor_naming_it(model):
    with pytest.raises(ValueError, match="shuffle_window must be a positive int"):
        DOWNPOUR(model, "adam", "mse", shuffle_window=0)
    with pytest.raises(ValueError, match="on_retry"):
        DOWNPOUR(model, "adam", "mse", on_retry="again")


def test_the_sync_and_async_trainers_refuse_the_other_kind(model):
    from distkeras_async.errors import AlgorithmError

    with pytest.raises(AlgorithmError, match="use AsynchronousDistributedTrainer"):
        SynchronizedDistributedTrainer(model, "adam", "mse", algorithm="downpour")
    with pytest.raises(AlgorithmError, match="use SynchronizedDistributedTrainer"):
        AsynchronousDistributedTrainer(model, "adam", "mse", algorithm="averaging")
    assert SynchronizedDistributedTrainer(model, "adam", "mse").algorithm_name == "averaging"
    assert DistributedTrainer(model, "adam", "mse", algorithm="easgd").synchronous


# -- the workers -------------------------------------------------------------------------


def test_the_worker_plan_carries_the_groups_not_their_fields():
    fields = {f.name for f in __import__("dataclasses").fields(WorkerPlan)}
    for item in ALL:
        assert item.name not in fields, f"WorkerPlan restates {item.name}"
    for group in ("run", "data", "failures", "devices"):
        assert group in fields


# -- the code ----------------------------------------------------------------------------

# At most two public entry points may take 16 or more named parameters (none does today).
MANY_PARAMETERS_ALLOWED: set[str] = set()


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                count = len([a for a in named if a.arg not in ("self", "cls")])
                yield f"{path.relative_to(PACKAGE.parent)}:{node.name}", count


def test_no_function_takes_16_or_more_named_parameters():
    many = {name: count for name, count in _functions() if count >= 16}
    assert set(many) <= MANY_PARAMETERS_ALLOWED, many
    assert len(MANY_PARAMETERS_ALLOWED) <= 2


# -- the docs ----------------------------------------------------------------------------

DOCS = PACKAGE.parent / "docs"


@pytest.mark.parametrize(
    ("page", "name"),
    [
        *(("trainers.md", f"`{item.name}`") for item in ALL),
        *(("spark-ml.md", f"`{item.spec.param}`") for item in ALL if item.spec.param),
        *(("serve.md", f"`{item.spec.flag}") for item in ALL if item.spec.flag),
    ],
)
def test_every_option_is_documented_where_it_is_exposed(page, name):
    assert name in (DOCS / page).read_text(), f"docs/{page} does not mention {name}"


# -- where an option's name appears -------------------------------------------------------

WATCHED = [
    "shuffle_window",
    "in_memory_limit",
    "on_retry",
    "round_timeout",
    "idle_timeout",
    "checkpoint_interval",
    "checkpoint_every",
    "snapshot_interval",
]


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for index, statement in enumerate(body):
            is_text = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            after_assignment = index and isinstance(body[index - 1], ast.Assign | ast.AnnAssign)
            if is_text and (index == 0 or after_assignment):
                found.add(id(statement.value))
    return found


def _code_words(path: pathlib.Path) -> set[str]:
    """Names, attributes, keywords and string literals in a module's code (not its docs)."""
    import re

    tree = ast.parse(path.read_text())
    docs = _docstring_nodes(tree)
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.keyword | ast.arg) and node.arg:
            words.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            words.add(node.name)
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        ):
            words.update(re.findall(r"\w+", node.value))
    return words


@pytest.mark.parametrize("name", WATCHED)
def test_an_option_s_name_appears_in_few_modules(name):
    camel = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
    roots = [PACKAGE, PACKAGE.parent / "algorithms"]
    modules = [
        str(path.relative_to(PACKAGE.parent))
        for root in roots
        for path in sorted(root.rglob("*.py"))
        if {name, camel} & _code_words(path)
    ]
    assert len(modules) <= 3, modules
