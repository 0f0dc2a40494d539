"""A worker session's hooks: one object, called at the documented moments; no Spark."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from distkeras_async import registry
from distkeras_async.algorithms.downpour import Downpour
from distkeras_async.testing import FakeServer
from distkeras_async.worker import HookList, SessionHooks, StepRecord, WorkerSession, run_worker
from distkeras_async.worker.exchange import run_session

SIZE = 4


class Losses:
    """A model whose steps add 1 to every weight and report the given losses in turn."""

    def __init__(self, losses: Iterable[float]) -> None:
        self.weights = np.zeros(SIZE, np.float32)
        self.losses = iter(losses)

    def get_flat(self) -> np.ndarray:
        return self.weights.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        self.weights = np.array(flat, np.float32)

    def train_step(self, batch: Any) -> Mapping[str, float]:
        self.weights += 1.0
        return {"loss": next(self.losses)}


class Recorder(SessionHooks):
    """Records every call, under ``name``; stops after ``stop_after`` exchanges."""

    # Declared: it defines every method, but asks for no epochs and no divergence check.
    closes_epochs = False
    checks_divergence = False

    def __init__(self, calls: list[tuple[Any, ...]], name: str = "", stop_after: int = 0):
        self.calls, self.name, self.stop_after = calls, name, stop_after
        self.asked = 0

    def on_progress(self, steps: int, records: Sequence[StepRecord]) -> None:
        self.calls.append((self.name, "progress", steps, len(records)))

    def on_exchange(self, metrics: Mapping[str, float]) -> None:
        self.calls.append((self.name, "exchange", metrics["steps"]))

    def after_exchange(self) -> bool:
        self.asked += 1
        self.calls.append((self.name, "after"))
        return bool(self.stop_after) and self.asked > self.stop_after

    def on_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.calls.append((self.name, "epoch", epoch, dict(logs)))

    def on_diverged(self, step: int, loss: float) -> None:
        self.calls.append((self.name, "diverged", step))


class Epochs(Recorder):
    closes_epochs = True


class Divergence(Recorder):
    checks_divergence = True


def session(model: Losses, hooks: SessionHooks | None = None, **options: Any) -> WorkerSession:
    algorithm = registry.resolve("downpour", communication_window=2)
    return WorkerSession(
        model, algorithm, FakeServer(Downpour(), np.zeros(SIZE)), hooks=hooks, **options
    )


def test_the_hooks_are_called_around_each_exchange_in_order():
    calls: list[tuple[Any, ...]] = []
    history = run_session(session(Losses([1.0] * 5), Recorder(calls)), range(5))
    assert len(history) == 5
    assert calls == [
        ("", "after"),  # after worker_start
        ("", "progress", 2, 2),
        ("", "exchange", 2.0),
        ("", "after"),
        ("", "progress", 4, 2),
        ("", "exchange", 4.0),
        ("", "after"),
        ("", "progress", 5, 1),  # the final commit carries the last step
        ("", "exchange", 5.0),
    ]


def test_no_hooks_is_the_same_as_the_default_hooks():
    plain = run_session(session(Losses([1.0] * 5)), range(5))
    default = run_session(session(Losses([1.0] * 5), SessionHooks()), range(5))
    assert [r.metrics for r in plain] == [r.metrics for r in default]


def test_a_hook_list_calls_every_hook_and_stops_when_any_says_stop():
    calls: list[tuple[Any, ...]] = []
    first, second = Recorder(calls, "a"), Recorder(calls, "b", stop_after=1)
    run = session(Losses([1.0] * 10), HookList([first, second]))
    history = run_session(run, range(10))
    assert run.stopped and len(history) == 2  # stopped after the first exchange
    assert first.asked == second.asked == 2  # both were asked each time, also at the stop
    assert [c[:2] for c in calls[:4]] == [
        ("a", "after"),
        ("b", "after"),
        ("a", "progress"),
        ("b", "progress"),
    ]


def test_epochs_close_only_for_hooks_that_close_them():
    calls: list[tuple[Any, ...]] = []
    run_session(session(Losses([1.0, 3.0, 5.0, 7.0]), Recorder(calls), steps_per_epoch=2), range(4))
    assert not [c for c in calls if c[1] == "epoch"]
    calls.clear()
    hooks = HookList([Recorder(calls, "plain"), Epochs(calls, "epochs")])
    assert hooks.closes_epochs and not hooks.checks_divergence
    run_session(session(Losses([1.0, 3.0, 5.0, 7.0]), hooks, steps_per_epoch=2), range(4))
    epochs = [c for c in calls if c[1] == "epoch"]
    # Every hook's on_epoch is called, in order; the logs are the epoch's mean metrics.
    assert epochs == [
        ("plain", "epoch", 1, {"loss": 2.0}),
        ("epochs", "epoch", 1, {"loss": 2.0}),
        ("plain", "epoch", 2, {"loss": 6.0}),
        ("epochs", "epoch", 2, {"loss": 6.0}),
    ]


def test_a_diverged_loss_is_checked_only_for_hooks_that_check_it():
    calls: list[tuple[Any, ...]] = []
    unchecked = session(Losses([1.0, np.nan, 1.0]), Recorder(calls))
    assert len(run_session(unchecked, range(3))) == 3 and not unchecked.diverged
    calls.clear()
    checked = session(Losses([1.0, np.inf, 1.0]), HookList([Divergence(calls, "d")]))
    history = run_session(checked, range(3))
    assert checked.diverged and checked.stopped and len(history) == 2
    assert ("d", "diverged", 1) in calls
    assert not [c for c in calls if c[1] in ("progress", "exchange")]  # nothing committed


def test_a_raising_on_diverged_fails_the_session_before_the_next_hook():
    class Fails(Divergence):
        def on_diverged(self, step: int, loss: float) -> None:
            raise RuntimeError(f"diverged at {step}")

    calls: list[tuple[Any, ...]] = []
    run = session(Losses([np.nan]), HookList([Fails(calls), Divergence(calls, "after")]))
    with pytest.raises(RuntimeError, match="diverged at 0"):
        run_session(run, range(1))
    assert not [c for c in calls if c[1] == "diverged"]


def test_run_worker_takes_a_function_and_hooks_together():
    calls: list[tuple[Any, ...]] = []
    reported: list[Mapping[str, float]] = []
    algorithm = registry.resolve("downpour", communication_window=2)
    server = FakeServer(Downpour(), np.zeros(SIZE))
    model = Losses([1.0] * 4)
    run_worker(
        model, algorithm, server, range(4), on_exchange=reported.append, hooks=Recorder(calls)
    )
    assert [m["steps"] for m in reported] == [2.0, 4.0]
    assert [c[2] for c in calls if c[1] == "exchange"] == [2.0, 4.0]


def test_a_hook_that_defines_a_method_and_declares_nothing_gets_its_behaviour():
    class EpochLogger(SessionHooks):
        def on_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
            pass

    class Mixin:
        def on_diverged(self, step: int, loss: float) -> None:
            raise AssertionError("diverged")

    class Guard(Mixin, SessionHooks):
        pass

    assert EpochLogger.closes_epochs and not EpochLogger.checks_divergence
    assert Guard.checks_divergence and not Guard.closes_epochs
    assert not Recorder.closes_epochs and Epochs.closes_epochs  # an explicit word wins
