"""Worker throughput on a GPU against the CPU of the same machine, through the task binding.

Each device is measured in a fresh Python process, bound the way a Spark task binds itself
(``distkeras_async.worker.devices.bind_devices``: GPU ``--gpu`` for the GPU run, none for
the CPU run) before Keras is imported. In it, one distkeras-async worker (DOWNPOUR,
``communication_window=5``, a real parameter server on 127.0.0.1) and plain ``model.fit``
train a 784-1024-1024-10 MLP on generated MNIST-sized data (20,480 rows, batch 256,
3 epochs), alternating; samples/s from the end of the first step to the end of the last,
medians over ``--repeats``. The worker's own report of the device it trained on is printed
next to its figures, so a GPU run that silently fell back to the CPU shows as such.

    python benchmarks/gpu.py                          # TensorFlow, GPU 0 against the CPU
    python benchmarks/gpu.py --backend torch --gpu 1

Without a GPU the GPU row says so and the script exits with status 3 after the CPU row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from backends import plain_fit, worker

ROWS, FEATURES, CLASSES = 20_480, 784, 10
BATCH, EPOCHS = 256, 3
NO_GPU = 3  # exit status when no GPU is visible to the backend


def _data() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    x = centers[labels] + rng.normal(scale=2.0, size=(ROWS, FEATURES)).astype(np.float32)
    return x.astype(np.float32), np.eye(CLASSES, dtype=np.float32)[labels]


def _model() -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


def _backend_gpus() -> list[str]:
    """The GPUs the backend of this process sees."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def measure(gpu: str | None, repeats: int) -> dict[str, Any]:
    """In this process: bind, then both ways, alternating; medians."""
    from distkeras_async.worker.devices import bind_devices

    bind_devices([] if gpu is None else [gpu])
    gpus = _backend_gpus()
    result: dict[str, Any] = {"asked": "cpu" if gpu is None else f"gpu {gpu}", "seen": gpus}
    if gpu is not None and not gpus:
        return {**result, "available": False}
    from distkeras_async.worker.backend import limit_threads

    limit_threads(os.cpu_count() or 1)
    x, y = _data()
    plain_fit(x[:1024], y[:1024], _model, BATCH, 1)  # warm-up: the runtime started once
    plain, ours, devices = [], [], set()
    for _ in range(repeats):
        plain.append(plain_fit(x, y, _model, BATCH, EPOCHS))
        sps, device = worker(x, y, _model, BATCH, EPOCHS)
        ours.append(sps)
        devices.add(device)
    return {
        **result,
        "available": True,
        "fit_sps": round(statistics.median(plain)),
        "worker_sps": round(statistics.median(ours)),
        "worker_device": sorted(devices),
        "fit_runs": [round(v) for v in plain],
        "worker_runs": [round(v) for v in ours],
    }


def main() -> None:
    """Measure the CPU and the GPU in their own processes; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--gpu", default="0", help="the GPU address to bind (Spark's numbering)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", choices=["cpu", "gpu"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        gpu = None if args.measure == "cpu" else args.gpu
        print(json.dumps(measure(gpu, args.repeats)))
        return
    print(f"{args.backend}, {ROWS:,} rows x {FEATURES}, batch {BATCH}, {EPOCHS} epochs\n")
    print("| device | `model.fit` | worker | worker trained on |")
    print("|---|---:|---:|---|")
    rows = {}
    for device in ("cpu", "gpu"):
        env = {**os.environ, "KERAS_BACKEND": args.backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--measure", device]
        command += ["--gpu", args.gpu, "--repeats", str(args.repeats)]
        out = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=3600, check=False
        )
        if out.returncode:
            raise RuntimeError(f"{device} failed:\n{out.stderr[-3000:]}")
        r = rows[device] = json.loads(out.stdout.strip().splitlines()[-1])
        if not r["available"]:
            print(f"| {r['asked']} | no GPU visible to {args.backend} | | |", flush=True)
            sys.exit(NO_GPU)
        print(
            f"| {r['asked']} | {r['fit_sps']:,} samples/s | {r['worker_sps']:,} samples/s | "
            f"{', '.join(r['worker_device'])} |",
            flush=True,
        )
        print(f"<!-- {json.dumps(r)} -->", flush=True)
    speedup = rows["gpu"]["worker_sps"] / rows["cpu"]["worker_sps"]
    print(f"\nworker on the GPU: {speedup:.1f}x the CPU")


if __name__ == "__main__":
    main()
