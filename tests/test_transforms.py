"""Update transforms, chained by a rule, and the plugin kit that checks any rule."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from distkeras_async.algorithm import Algorithm, Hyperparameter, UpdateMeta
from distkeras_async.rules import DeltaAlgorithm
from distkeras_async.testing import (
    FakeServer,
    check_algorithm,
    check_declarations,
    check_server_rule,
    check_worker_rule,
    f32,
)
from distkeras_async.transforms import (
    ClipNorm,
    ClipValue,
    Scale,
    Sign,
    StalenessDivide,
    Transform,
    apply_all,
    check_chain,
)


def test_each_transform_works_in_place():
    update = f32(3, -4, 0.5, 0)
    apply_all([Scale(2.0)], update)
    np.testing.assert_array_equal(update, [6, -8, 1, 0])
    apply_all([ClipValue(2.0)], update)
    np.testing.assert_array_equal(update, [2, -2, 1, 0])
    update = f32(3, -4)
    ClipNorm(1.0)(update)  # norm 5 -> 1, direction kept
    np.testing.assert_allclose(update, [0.6, -0.8], rtol=1e-6)
    small = f32(0.3, 0.4)
    ClipNorm(1.0)(small)  # already within: unchanged
    np.testing.assert_array_equal(small, f32(0.3, 0.4))
    signs = f32(-2, 0, 5e-9)
    Sign()(signs)
    np.testing.assert_array_equal(signs, [-1, 0, 1])


def test_staleness_divide_needs_the_servers_meta():
    update = f32(3, 6)
    StalenessDivide()(update, UpdateMeta(worker=0, pulled_version=4, version=6))
    np.testing.assert_allclose(update, [1, 2])
    with pytest.raises(ValueError, match="runs on the server"):
        StalenessDivide()(update)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Scale(float("nan")), "finite factor"),
        (lambda: ClipValue(0), "limit > 0"),
        (lambda: ClipNorm(-1), "max_norm > 0"),
    ],
)
def test_bad_transform_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_chains_are_checked_where_they_are_declared():
    chain = check_chain([Sign(), Scale(2)], "worker")
    assert isinstance(chain, tuple) and [type(t) for t in chain] == [Sign, Scale]
    with pytest.raises(ValueError, match="put it in server_transforms"):
        check_chain([StalenessDivide()], "worker")
    with pytest.raises(TypeError, match="must be Transform instances"):
        check_chain([np.sign], "server")
    with pytest.raises(ValueError, match="put it in server_transforms"):

        class Misplaced(DeltaAlgorithm):
            """Staleness is unknown on the worker."""

            name = "misplaced"
            worker_transforms = (StalenessDivide(),)


class SignDownpour(DeltaAlgorithm):
    """Commit half the sign of the change; damp stale commits on the server."""

    name = "sign-downpour"
    worker_transforms: ClassVar[tuple[Transform, ...]] = (Sign(), Scale(0.5))
    server_transforms: ClassVar[tuple[Transform, ...]] = (StalenessDivide(),)


def test_a_rule_built_from_transforms_commits_and_applies_them():
    worker, server = SignDownpour(), FakeServer(SignDownpour(), np.zeros(3, np.float32))
    weights = worker.worker_start(np.zeros(3, np.float32), server)
    weights = worker.worker_exchange(weights + f32(0.2, -3, 0), server)
    np.testing.assert_array_equal(server.updates[0], [0.5, -0.5, 0])
    np.testing.assert_array_equal(server.center, [0.5, -0.5, 0])
    # A stale commit (one other update since the pull) is halved on the server.
    server.version += 1
    worker.worker_exchange(weights + f32(1, 1, 1), server)
    np.testing.assert_array_equal(server.center, [0.75, -0.25, 0.25])
    # Not a linear update any more: the server's in-place fast path is not used for it.
    assert not SignDownpour.declares_linear_update()
    check_algorithm(SignDownpour)


def test_the_real_server_applies_the_server_transforms(make_server, connect):
    server = make_server(weights=[np.zeros(4, np.float32)], algorithm=SignDownpour, num_workers=1)
    client = connect(server)
    client.pull()
    client.commit(f32(4, -2, 0, 1))
    client.commit(f32(2, 2, 2, 2))  # pulled at version 0, applied at 1: staleness 1
    np.testing.assert_array_equal(server.center_flat, [5, -1, 1, 2])


# --- the kit fails rules that break the contract -------------------------------------------


class AwayFromWorker(DeltaAlgorithm):
    """Commits the opposite of what the worker learned."""

    name = "away"

    def delta_scale(self) -> float:
        return -1.0


class Undocumented(DeltaAlgorithm):
    """A hyperparameter without a doc."""

    name = "undocumented"
    hyperparameters: ClassVar[dict[str, Hyperparameter]] = {"knob": Hyperparameter(1.0, float)}


class DoubledButLinear(DeltaAlgorithm):
    """Doubles every update while still promising a bounded linear update."""

    name = "doubled"
    linear_update = True

    def server_apply(self, center: np.ndarray, update: np.ndarray, meta: UpdateMeta) -> None:
        center += 2 * update

    def server_update(
        self, out: np.ndarray, center: np.ndarray, update: np.ndarray, meta: UpdateMeta
    ) -> None:
        np.add(center, 2 * update, out=out)


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (AwayFromWorker, check_worker_rule, "towards the worker"),
        (Undocumented, check_declarations, "'knob' has no doc"),
        (DoubledButLinear, check_server_rule, "bounded linear update"),
    ],
)
def test_the_kit_fails_a_rule_that_breaks_the_contract(cls: type[Algorithm], check, message):
    with pytest.raises(AssertionError, match=message):
        check(cls)
    with pytest.raises(AssertionError, match=message):
        check_algorithm(cls)
