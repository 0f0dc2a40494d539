"""A worker's peak memory against its partition's size, streamed and in memory.

Each measurement runs in a fresh Python process (``probe``): it imports Keras, starts a
parameter server on 127.0.0.1, warms a model up, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), and then hands one worker a partition of generated float32 rows,
arriving as Arrow record batches of 10,000 rows as Spark sends them. It prints the resident
set before the partition arrived and the peak while it was spooled and trained (VmHWM, file
pages of the mapped spool included), in MiB, as JSON.

    python benchmarks/stream_memory.py                # the table in docs/benchmarks.md
    python benchmarks/stream_memory.py probe --mb 400 --limit 0

The table's partitions: 0.1, 1 and 4 GB of features (256 float32 per row), streamed
(``in_memory_limit=0``) and, up to 1 GB, held in memory, one epoch at batch size 1024.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

WIDTH = 256
ARROW_BATCH = 10_000


def _status(field: str) -> float:
    """A /proc/self/status memory field, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _batches(rows: int, seed: int = 0) -> Iterator[Any]:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    for start in range(0, rows, ARROW_BATCH):
        count = min(ARROW_BATCH, rows - start)
        x = rng.random((count, WIDTH), dtype=np.float32)
        y = np.zeros((count, 10), np.float32)
        y[np.arange(count), (x[:, 0] * 10).astype(int)] = 1.0
        yield pa.RecordBatch.from_arrays(
            [
                pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH),
                pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), 10),
            ],
            names=["features", "label"],
        )


def probe(mb: float, limit: int, epochs: int = 1, batch_size: int = 1024) -> dict[str, Any]:
    """Train one worker on ``mb`` MiB of generated features; its memory and time.

    Returns:
        ``rows``, ``partition_mb``, ``baseline_mb`` (resident before the partition),
        ``peak_mb`` (the peak after), ``streamed`` and ``seconds``.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras
    import numpy as np

    from distkeras_async import ParameterServer, new_secret
    from distkeras_async.worker.keras_worker import WorkerPlan, limit_threads, train_worker
    from distkeras_async.worker.partition import spool
    from distkeras_async.worker.serialization import describe_model

    limit_threads(2)

    def model() -> Any:
        return keras.Sequential(
            [
                keras.Input((WIDTH,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    rows = int(mb * 2**20 / (WIDTH * 4))
    master = model()
    spec = describe_model(master, "adam", "categorical_crossentropy", ["accuracy"])
    # Warm-up: the same kind of model traced once, so the baseline holds TensorFlow's runtime.
    warm = model()
    warm.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = np.zeros((batch_size, WIDTH), np.float32), np.zeros((batch_size, 10), np.float32)
    warm.fit(x, y, batch_size=batch_size, verbose=0)
    secret = new_secret()
    server = ParameterServer(
        master.get_weights(), "downpour", num_workers=1, secret=secret, host="127.0.0.1", port=0
    )
    port = server.start()
    plan = WorkerPlan(
        model_spec=spec.to_json(),
        algorithm="downpour",
        hyperparameters={"communication_window": 20},
        host="127.0.0.1",
        port=port,
        secret=secret,
        num_epoch=epochs,
        batch_size=batch_size,
        shuffle=True,
        in_memory_limit=limit,
    )
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current resident set
        baseline = _status("VmRSS")
        began = time.perf_counter()
        with spool(_batches(rows), ["features", "label"], limit=limit) as partition:
            streamed = not partition.in_memory
            history = train_worker(plan, 0, 0, partition, task_cores=2)
        seconds = time.perf_counter() - began
    finally:
        server.stop()
    assert len(history) == epochs * -(-rows // batch_size), "not every batch was trained"
    return {
        "rows": rows,
        "partition_mb": round(rows * (WIDTH + 10) * 4 / 2**20, 1),
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(_status("VmHWM"), 1),
        "streamed": streamed,
        "seconds": round(seconds, 2),
    }


def run_probe(mb: float, limit: int, epochs: int = 1) -> dict[str, Any]:
    """:func:`probe` in a fresh Python process (its peak RSS is its own)."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "probe",
            *("--mb", str(mb), "--limit", str(limit)),
            *("--epochs", str(epochs)),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the probe failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Print the probe's result, or the table of all sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="table", choices=["table", "probe"])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sizes", default="100,1024,4096")
    args = parser.parse_args()
    if args.command == "probe":
        print(json.dumps(probe(args.mb, args.limit, args.epochs)))
        return
    print("| partition | path | baseline RSS | peak RSS | growth | seconds |")
    print("|---|---|---|---|---|---|")
    for mb in [float(s) for s in args.sizes.split(",")]:
        modes = [("streamed", 0)] + ([("in memory", 1 << 40)] if mb <= 1024 else [])
        for name, limit in modes:
            r = run_probe(mb, limit)
            print(
                f"| {r['partition_mb']:,.0f} MiB | {name} | {r['baseline_mb']:,.0f} MiB | "
                f"{r['peak_mb']:,.0f} MiB | {r['peak_mb'] - r['baseline_mb']:,.0f} MiB | "
                f"{r['seconds']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
