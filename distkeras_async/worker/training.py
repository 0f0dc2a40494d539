"""One worker's training, wired: its session, its hooks, and ``model.fit`` or a plain loop.

:class:`~distkeras_async.worker.keras_worker.KerasWorker` prepares the data and the
connection; this module runs the local steps against them. Local steps run inside
``model.fit`` with the exchanges in a callback, unless the worker takes its own steps or the
algorithm acts on every step: those run through
:func:`~distkeras_async.worker.exchange.run_session`. The session's hooks are the
:class:`~distkeras_async.worker.reporter.Reporter` (progress for the server) and the
:class:`~distkeras_async.worker.requests.DriverRequests` (the driver's stop and rate, epoch
ends, a diverged loss).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from distkeras_async.algorithm import Algorithm, flatten_state, unflatten_state
from distkeras_async.worker.exchange import HookList, StepRecord, WorkerSession, run_session
from distkeras_async.worker.local_model import KerasLocalModel, fit_callback
from distkeras_async.worker.plan import WorkerPlan
from distkeras_async.worker.protocols import ExchangeClient
from distkeras_async.worker.reporter import Reporter
from distkeras_async.worker.requests import DriverRequests
from distkeras_async.worker.sources import ArraySource, StreamSource

TrainStep = Callable[[Any], Mapping[str, float]]
"""A worker's own local step on one batch (``KerasWorker.train_step`` bound to its model)."""


def carry_rule_state(algorithm: Algorithm, client: ExchangeClient) -> None:
    """Resume the rule's state from the server, and send it ahead of every commit.

    Only for a rule that keeps worker state (``Algorithm.initial_worker_state``) and a
    connection that carries it: the state after each commit then reaches the server with
    it, and a retried attempt continues from the state at its predecessor's last accepted
    commit, as it continues after that commit's local steps.
    """
    template = algorithm.initial_worker_state(client.layout)
    if not client.carries_state or not flatten_state(template):
        return
    if client.restored_state is not None:
        algorithm.restore_worker_state(unflatten_state(template, client.restored_state))
    client.state_source = algorithm.worker_state


def train_session(
    model: Any,
    algorithm: Algorithm,
    client: ExchangeClient,
    source: ArraySource | StreamSource,
    *,
    plan: WorkerPlan,
    worker_id: int,
    train_step: TrainStep,
    in_fit: bool,
) -> list[StepRecord]:
    """Train ``model`` on ``source``'s batches under ``algorithm``; returns the history.

    Args:
        model: the worker's compiled Keras model.
        algorithm: this worker's instance of the algorithm.
        client: the worker's connection.
        source: the partition's batches.
        plan: the run's plan.
        worker_id: the worker's id (recorded in the history).
        train_step: one local step on a batch, for the plain loop.
        in_fit: run the local steps inside ``model.fit`` (see
            :meth:`~distkeras_async.worker.keras_worker.KerasWorker.uses_fit`).
    """
    rows, batch_size = source.rows, plan.run.batch_size
    requests = DriverRequests(client, model, plan.terminate_on_nan)
    local = KerasLocalModel(
        model, client.layout, step=lambda batch: requests.with_rate(train_step(batch))
    )
    # A retried attempt of an asynchronous task resumes after the steps the server
    # already applied (from any attempt): no row's update is applied twice.
    resume = plan.failures.on_retry == "resume" and not algorithm.synchronous
    skip = client.progress if resume else 0
    if resume:
        carry_rule_state(algorithm, client)
    report = Reporter(client, batch_size)
    per_epoch = -(-rows // batch_size)
    session = WorkerSession(
        local,
        algorithm,
        client,
        worker_id=worker_id,
        first_step=skip,
        steps_per_epoch=per_epoch,
        running_means=in_fit,
        exchange_at_epoch_end=plan.exchange_at_epoch_end,
        hooks=HookList([report, requests]),
    )
    if skip and per_epoch and skip % per_epoch == 0:
        # The killed attempt may have died between its epoch-end commit and that
        # epoch's report: say the epoch ended (the server keeps the logs it has).
        client.report({}, epoch=skip // per_epoch)
    if rows == 0 or not in_fit:
        run_session(session, source.batches(skip))
    else:
        session.start()
        callback = fit_callback(session, requests)
        for call in source.fit_calls(skip):
            if session.stopped:
                break
            model.fit(
                **call,
                batch_size=None if "steps_per_epoch" in call else batch_size,
                shuffle=False,
                verbose=0,
                callbacks=[callback],
            )
        session.finish()
    if not session.diverged:  # its report must stay the worker's last word
        report.flush()
    return session.history
