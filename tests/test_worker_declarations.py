"""What a worker class declares (``steps_itself``, ...), and what follows from it; no Spark."""

from __future__ import annotations

from typing import Any

import pytest

from distkeras_async import registry
from distkeras_async.worker import KerasWorker

DECLARATIONS = ("steps_itself", "takes_arrays", "decodes_columns", "prepares_columns")
DOWNPOUR = registry.resolve("downpour")  # takes its steps in fit
EAMSGD = registry.resolve("eamsgd")  # acts on every step: never fit


def instance(cls: type[KerasWorker]) -> KerasWorker:
    # The declarations and uses_fit read nothing of the plan.
    plan: Any = None
    return cls(plan, worker_id=0, attempt=0)


class OwnStep(KerasWorker):
    def train_step(self, model: Any, batch: Any) -> Any:
        return super().train_step(model, batch)


class OwnStepInFit(KerasWorker):
    steps_itself = False  # declared: its train_step is for the per-step path only

    def train_step(self, model: Any, batch: Any) -> Any:
        return super().train_step(model, batch)


class OwnStepChild(OwnStep):
    pass


class OwnStepInFitChild(OwnStepInFit):
    pass


class OwnBatches(KerasWorker):
    def batches(self, x: Any, y: Any, sample_weight: Any = None) -> Any:
        return super().batches(x, y, sample_weight)


class OwnPrepare(KerasWorker):
    def prepare(self, model: Any, x: Any, y: Any) -> Any:
        return super().prepare(model, x, y)


class ScaledPrepare(KerasWorker):
    prepares_columns = False  # keeps shapes and classes: the checks stay

    def prepare(self, model: Any, x: Any, y: Any) -> Any:
        return super().prepare(model, x, y)


def test_the_default_worker_declares_nothing_and_runs_in_fit():
    assert not any(getattr(KerasWorker, name) for name in DECLARATIONS)
    assert not KerasWorker.builds_own_model and not KerasWorker.transforms_columns()
    assert instance(KerasWorker).uses_fit(DOWNPOUR)
    assert not instance(KerasWorker).uses_fit(EAMSGD)


def test_a_subclass_defining_train_step_steps_itself():
    assert OwnStep.steps_itself
    assert not OwnStep.takes_arrays  # train_step says nothing about the partition's form
    assert not instance(OwnStep).uses_fit(DOWNPOUR)


def test_an_explicit_declaration_wins_over_the_hooks_defined():
    assert OwnStepInFit.steps_itself is False
    assert instance(OwnStepInFit).uses_fit(DOWNPOUR)
    assert not instance(OwnStepInFit).uses_fit(EAMSGD)  # the algorithm still decides too


@pytest.mark.parametrize(
    ("child", "parent"), [(OwnStepChild, OwnStep), (OwnStepInFitChild, OwnStepInFit)]
)
def test_a_subclass_of_a_subclass_inherits_its_declarations(child, parent):
    for name in DECLARATIONS:
        assert getattr(child, name) == getattr(parent, name)
    assert instance(child).uses_fit(DOWNPOUR) == instance(parent).uses_fit(DOWNPOUR)


def test_batches_leave_fit_and_need_the_arrays():
    assert OwnBatches.steps_itself and OwnBatches.takes_arrays
    assert not instance(OwnBatches).uses_fit(DOWNPOUR)


def test_prepare_turns_off_the_column_checks_unless_declared_otherwise():
    assert OwnPrepare.prepares_columns and OwnPrepare.transforms_columns()
    assert not ScaledPrepare.prepares_columns and not ScaledPrepare.transforms_columns()
    assert instance(OwnPrepare).uses_fit(DOWNPOUR)  # preparing the data keeps fit


def test_a_hook_from_a_mixin_counts_as_the_class_s_own():
    class StepMixin:
        def train_step(self, model: Any, batch: Any) -> Any:
            return {}

    class Mixed(StepMixin, KerasWorker):
        pass

    class MixedChild(Mixed):
        pass

    assert Mixed.steps_itself and MixedChild.steps_itself
    assert not instance(Mixed).uses_fit(DOWNPOUR)
