"""Training history: per worker and per step, and averaged over the workers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def flatten_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """History rows as returned by the workers -> one flat dict per worker step.

    Each dict has ``worker``, ``iteration``, ``timestamp`` and one key per metric (``loss``,
    ``accuracy``, ...), sorted by worker then iteration.
    """
    out = []
    for row in rows:
        metrics = row.get("metrics") or {}
        if not isinstance(metrics, Mapping):  # Spark returns maps as lists of pairs sometimes
            metrics = dict(metrics)
        out.append(
            {
                "worker": int(row["worker"]),
                "iteration": int(row["iteration"]),
                "timestamp": float(row["timestamp"]),
                **{str(k): float(v) for k, v in metrics.items()},
            }
        )
    out.sort(key=lambda r: (r["worker"], r["iteration"]))
    return out


def average_history(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average every metric over the workers, step by step.

    Returns one dict per iteration with ``iteration``, ``workers`` (how many workers had that
    step), ``timestamp`` (the latest) and the mean of each metric.
    """
    by_step: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for record in history:
        by_step[int(record["iteration"])].append(record)
    out = []
    for iteration in sorted(by_step):
        records = by_step[iteration]
        keys = sorted({k for r in records for k in r} - {"worker", "iteration", "timestamp"})
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
