"""Training history: per worker and per step, and averaged over the workers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def flatten_rows(
    rows: Iterable[Mapping[str, Any]],
    lost: Mapping[tuple[int, int], Sequence[tuple[int, float, Mapping[str, float]]]] | None = None,
) -> list[dict[str, Any]]:
    """History rows as returned by the workers -> one flat dict per worker step.

    Each dict has ``worker``, ``attempt``, ``iteration``, ``timestamp``, ``device`` (where the
    worker trained: ``cpu:0``, ``gpu:0``, ...), ``gpus`` (the Spark GPU addresses of its task,
    comma-separated, empty for none) and one key per metric (``loss``, ``accuracy``, ...),
    sorted by worker, iteration, then attempt. ``lost`` holds the step records the server
    kept of attempts that never finished (a killed task); their steps are kept too, marked
    ``"retried": True``.
    """
    out = []
    for row in rows:
        metrics = row.get("metrics") or {}
        if not isinstance(metrics, Mapping):  # Spark returns maps as lists of pairs sometimes
            metrics = dict(metrics)
        record: dict[str, Any] = {
            "worker": int(row["worker"]),
            "attempt": int(row.get("attempt") or 0),
            "iteration": int(row["iteration"]),
            "timestamp": float(row["timestamp"]),
        }
        # Where the worker trained (its backend's device) and its Spark GPUs.
        for key in ("device", "gpus"):
            if row.get(key) is not None:
                record[key] = str(row[key])
        record.update({str(k): float(v) for k, v in metrics.items()})
        out.append(record)
    for (worker, attempt), records in (lost or {}).items():
        for iteration, timestamp, step_metrics in records:
            out.append(
                {
                    "worker": worker,
                    "attempt": attempt,
                    "iteration": int(iteration),
                    "timestamp": float(timestamp),
                    "retried": True,
                    **{str(k): float(v) for k, v in step_metrics.items()},
                }
            )
    out.sort(key=lambda r: (r["worker"], r["iteration"], r["attempt"]))
    return out


def average_history(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average every metric over the workers, step by step.

    Returns one dict per iteration with ``iteration``, ``workers`` (how many workers had that
    step), ``timestamp`` (the latest) and the mean of each metric. Steps of an attempt that
    was retried (``retried``) are left out: its retry's steps replace them.
    """
    by_step: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for record in history:
        if not record.get("retried"):
            by_step[int(record["iteration"])].append(record)
    out = []
    for iteration in sorted(by_step):
        records = by_step[iteration]
        keys = sorted(
            {k for r in records for k in r}
            - {"worker", "attempt", "iteration", "timestamp", "retried", "device", "gpus"}
        )
        averaged: dict[str, Any] = {
            "iteration": iteration,
            "workers": len(records),
            "timestamp": max(float(r["timestamp"]) for r in records),
        }
        for key in keys:
            values = [float(r[key]) for r in records if key in r]
            averaged[key] = sum(values) / len(values)
        out.append(averaged)
    return out
