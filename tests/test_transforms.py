"""Update transforms (values with state, built from hyperparameters), the rules made of
them, and the plugin kit that checks any rule against the contract the registry checks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from distkeras_async import Hyperparameter, delta_rule, registry
from distkeras_async.algorithm import Algorithm, UpdateMeta, flatten_state, unflatten_state
from distkeras_async.errors import AlgorithmError, PluginError
from distkeras_async.layout import Layout
from distkeras_async.rules import DeltaAlgorithm
from distkeras_async.testing import (
    FakeServer,
    check_algorithm,
    check_declarations,
    check_server_rule,
    check_state,
    check_worker_rule,
    f32,
    next_center,
)
from distkeras_async.transforms import (
    Context,
    Transform,
    chain,
    check_chain,
    clip_norm,
    clip_tensor_norm,
    clip_value,
    momentum,
    scale,
    scale_by_trust_ratio,
    sign,
    staleness_divide,
)

LAYOUT = Layout.of([np.zeros(2, np.float32), np.zeros(2, np.float32)])
WORKER = Context(LAYOUT)


def run(transform: Transform, update: np.ndarray, context: Context = WORKER) -> np.ndarray:
    result, state = transform.update(update, transform.init(context.layout), context)
    assert flatten_state(state) == [] or state
    return result


def test_each_transform_works_in_place():
    update = f32(3, -4, 0.5, 0)
    assert run(scale(2.0), update) is update
    np.testing.assert_array_equal(update, [6, -8, 1, 0])
    assert run(clip_value(2.0), update) is update
    np.testing.assert_array_equal(update, [2, -2, 1, 0])
    update = f32(3, -4, 0, 0)
    run(clip_norm(1.0), update)  # norm 5 -> 1, direction kept
    np.testing.assert_allclose(update, [0.6, -0.8, 0, 0], rtol=1e-6)
    small = f32(0.3, 0.4, 0, 0)
    run(clip_norm(1.0), small)  # already within: unchanged
    np.testing.assert_array_equal(small, f32(0.3, 0.4, 0, 0))
    signs = f32(-2, 0, 5e-9, 1)
    run(sign(), signs)
    np.testing.assert_array_equal(signs, [-1, 0, 1, 1])


def test_per_tensor_transforms_see_each_tensor():
    # Two tensors of two elements: (3, -4) has norm 5, (0.3, 0.4) norm 0.5.
    update = f32(3, -4, 0.3, 0.4)
    run(clip_tensor_norm(1.0), update)
    np.testing.assert_allclose(update, [0.6, -0.8, 0.3, 0.4], rtol=1e-6)
    # Layer-wise scale: each tensor moves by coefficient * |w| (here |w| = 10 and 1).
    weights = f32(6, 8, 0.6, 0.8)
    update = f32(3, -4, 0.3, 0.4)
    run(scale_by_trust_ratio(0.1, eps=1e-30), update, Context(LAYOUT, weights=weights))
    np.testing.assert_allclose(update, [0.6, -0.8, 0.06, 0.08], rtol=1e-6)
    with pytest.raises(ValueError, match="needs the weights"):
        run(scale_by_trust_ratio(), f32(1, 1, 1, 1))


def test_momentum_keeps_its_velocity_as_state():
    transform = momentum(0.5)
    (velocity,) = state = transform.init(LAYOUT)
    assert velocity.dtype == np.float32 and velocity.shape == (4,) and not velocity.any()
    first, state = transform.update(f32(2, 0, 0, 0), state, WORKER)
    np.testing.assert_array_equal(first, [2, 0, 0, 0])
    second, state = transform.update(f32(0, 2, 0, 0), state, WORKER)
    np.testing.assert_array_equal(second, [1, 2, 0, 0])  # 0.5 * (2, 0) + (0, 2)
    nesterov = momentum(0.5, nesterov=True)
    _, kept = nesterov.update(f32(2, 0, 0, 0), nesterov.init(LAYOUT), WORKER)
    step, _ = nesterov.update(f32(2, 0, 0, 0), kept, WORKER)
    np.testing.assert_array_equal(step, [2 + 0.5 * 3, 0, 0, 0])  # u + decay * (0.5*2 + 2)


def test_a_chain_threads_each_transforms_state():
    both = chain(momentum(0.5), scale(2.0), momentum(0.0))
    state = both.init(LAYOUT)
    assert len(state) == 3 and state[1] == () and len(flatten_state(state)) == 2
    out, state = both.update(f32(1, 0, 0, 0), state, WORKER)
    out, state = both.update(f32(1, 0, 0, 0), state, WORKER)
    np.testing.assert_array_equal(out, [3, 0, 0, 0])  # 2 * (0.5 * 1 + 1)
    arrays = flatten_state(state)
    rebuilt = unflatten_state(both.init(LAYOUT), [a.copy() for a in arrays])
    assert [a.tolist() for a in flatten_state(rebuilt)] == [a.tolist() for a in arrays]
    with pytest.raises(AlgorithmError, match="fewer arrays"):
        unflatten_state(both.init(LAYOUT), arrays[:1])
    with pytest.raises(AlgorithmError, match="float32"):
        unflatten_state(both.init(LAYOUT), [arrays[0], arrays[1].astype(np.float64)])


def test_staleness_divide_needs_one_commit_on_the_server():
    update = f32(3, 6, 0, 0)
    meta = UpdateMeta(worker=0, pulled_version=4, version=6)
    run(staleness_divide(), update, Context(LAYOUT, metas=(meta,)))
    np.testing.assert_allclose(update, [1, 2, 0, 0])
    with pytest.raises(ValueError, match="one asynchronous commit"):
        run(staleness_divide(), update)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: scale(float("nan")), "finite factor"),
        (lambda: clip_value(0), "limit > 0"),
        (lambda: clip_norm(-1), "max_norm > 0"),
        (lambda: clip_tensor_norm(float("inf")), "max_norm > 0"),
        (lambda: momentum(1.0), "decay in"),
        (lambda: scale_by_trust_ratio(0), "coefficient > 0"),
    ],
)
def test_bad_transform_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_chains_are_checked_where_they_are_built():
    assert check_chain([sign(), scale(2)])[1].factor == 2  # type: ignore[attr-defined]
    assert len(check_chain(sign())) == 1
    with pytest.raises(TypeError, match="must be Transform values"):
        check_chain([np.sign])  # type: ignore[list-item]
    misplaced = delta_rule(
        "misplaced", "Staleness is unknown on the worker.", worker=staleness_divide()
    )
    with pytest.raises(AlgorithmError, match="among the server transforms"):
        misplaced()
    in_a_round = delta_rule(
        "round-staleness",
        "A round has no single staleness.",
        server=staleness_divide(),
        synchronous=True,
    )
    with pytest.raises(AlgorithmError, match="no single staleness"):
        in_a_round()


SignDownpour = delta_rule(
    "sign-downpour",
    "Commit a scaled sign of the change; damp stale commits on the server.",
    worker=lambda rule: [sign(), scale(rule.step)],
    server=staleness_divide(),
    hyperparameters={"step": Hyperparameter(0.5, float, "size of each signed step")},
)


def test_a_rule_built_from_transforms_commits_and_applies_them():
    assert SignDownpour.__name__ == "SignDownpour" and SignDownpour.__module__ == __name__
    worker, server = SignDownpour(), FakeServer(SignDownpour(), np.zeros(3, np.float32))
    weights = worker.worker_start(np.zeros(3, np.float32), server)
    weights = worker.worker_exchange(weights + f32(0.2, -3, 0), server)
    np.testing.assert_array_equal(server.updates[0], [0.5, -0.5, 0])
    np.testing.assert_array_equal(server.center, [0.5, -0.5, 0])
    # A stale commit (one other update since the pull) is halved on the server.
    server.version += 1
    worker.worker_exchange(weights + f32(1, 1, 1), server)
    np.testing.assert_array_equal(server.center, [0.75, -0.25, 0.25])
    # The transforms are built from the rule's hyperparameters.
    quarter = SignDownpour(step=0.25)
    server = FakeServer(SignDownpour(), np.zeros(3, np.float32))
    quarter.worker_exchange(quarter.worker_start(np.zeros(3), server) + 1, server)
    np.testing.assert_array_equal(server.center, [0.25, 0.25, 0.25])
    check_algorithm(SignDownpour)


def test_linear_promise_follows_the_server_chain():
    assert SignDownpour().promises_linear_update()  # staleness damping is b * u, |b| <= 1
    clipped = delta_rule("clip-once", "Clipped.", server=clip_norm(1.0))
    assert not clipped().promises_linear_update()  # a norm is not linear
    assert delta_rule("half", "Half.", server=scale(0.5))().promises_linear_update()
    assert not delta_rule("twice", "Twice.", server=scale(2.0))().promises_linear_update()


def test_the_real_server_applies_the_server_transforms(make_server, connect):
    server = make_server(weights=[np.zeros(4, np.float32)], algorithm=SignDownpour, num_workers=1)
    client = connect(server)
    client.pull()
    client.commit(f32(4, -2, 0, 1))
    client.commit(f32(2, 2, 2, 2))  # pulled at version 0, applied at 1: staleness 1
    np.testing.assert_array_equal(server.center_flat, [5, -1, 1, 2])


PerTensorClip = delta_rule(
    "per-tensor-clip",
    "DOWNPOUR whose server clips each tensor of a commit to max_norm.",
    server=lambda rule: clip_tensor_norm(rule.max_norm),
    hyperparameters={"max_norm": Hyperparameter(1.0, float, "largest tensor norm", minimum=0)},
)


def test_the_real_server_gives_per_tensor_transforms_the_models_layout(make_server, connect):
    weights = [np.zeros(2, np.float32), np.zeros(2, np.float32)]
    server = make_server(weights=weights, algorithm=PerTensorClip, num_workers=1, max_norm=1.0)
    client = connect(server)
    client.commit(f32(3, -4, 0.3, 0.4))
    np.testing.assert_allclose(server.center_flat, [0.6, -0.8, 0.3, 0.4], rtol=1e-6)


def test_a_sharded_server_refuses_a_rule_that_is_not_elementwise(secret):
    from distkeras_async.server.sharded import ShardedParameterServer

    weights = [np.zeros(8, np.float32)]
    with pytest.raises(AlgorithmError, match="not elementwise"):
        ShardedParameterServer(weights, PerTensorClip, shards=2, num_workers=1, secret=secret)


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

    def server_update(self, out, center, updates, metas) -> None:
        np.add(center, 2 * updates[0], out=out)


class WritesHalf(DeltaAlgorithm):
    """Declares writes_all but writes only the first half of out."""

    name = "writes-half"
    writes_all = True

    def server_update(self, out, center, updates, metas) -> None:
        half = len(out) // 2
        np.add(center[:half], updates[0][:half], out=out[:half])


class ForgetsItsState(DeltaAlgorithm):
    """A worker momentum whose state is not what it keeps (worker_state says nothing)."""

    name = "forgets"

    def worker_transforms(self):
        return [momentum(0.9)]

    def worker_state(self):
        ((velocity,),) = super().worker_state()
        return ((np.zeros_like(velocity),),)


class Version2Rule(DeltaAlgorithm):
    """A rule written for contract version 2."""

    name = "version-2"

    def server_apply(self, center, update, meta) -> None:
        center += update


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (AwayFromWorker, check_worker_rule, "towards the worker"),
        (Undocumented, check_declarations, "'knob' has no doc"),
        (DoubledButLinear, check_server_rule, "bounded linear update"),
        (WritesHalf, check_server_rule, "left NaN in out"),
        (ForgetsItsState, check_state, "committed something else"),
        (Version2Rule, check_declarations, "define server_update"),
    ],
)
def test_the_kit_fails_a_rule_that_breaks_the_contract(cls: type[Algorithm], check, message):
    with pytest.raises(AssertionError, match=message):
        check(cls)
    with pytest.raises(AssertionError, match=message):
        check_algorithm(cls)


def test_the_registry_checks_the_same_contract_as_the_kit():
    with pytest.raises(AlgorithmError, match="define server_update"):
        registry.register(Version2Rule)
    assert "version-2" not in registry.available()

    class NoServerRule(Algorithm):
        """Defines a worker rule only."""

        name = "no-server-rule"

        def worker_exchange(self, weights, server):
            return weights

    with pytest.raises(AlgorithmError, match="does not define server_update"):
        registry.register(NoServerRule)
    with pytest.raises(AssertionError, match="does not define server_update"):
        check_declarations(NoServerRule)
    assert issubclass(PluginError, AlgorithmError)


def test_a_class_that_redefines_the_server_rule_makes_its_own_promises():
    assert DeltaAlgorithm.linear_update and DeltaAlgorithm.writes_all
    assert not DoubledButLinear.writes_all and DoubledButLinear.linear_update

    class Own(DeltaAlgorithm):
        """Its own server rule, no promise."""

        name = "own"

        def server_update(self, out, center, updates, metas) -> None:
            out += updates[0]

    assert not Own.linear_update and not Own.writes_all
    assert next_center(Own(), f32(1, 2), [f32(1, 1)], [UpdateMeta(0, 0, 0)]).tolist() == [2, 3]
