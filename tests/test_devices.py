"""GPU binding of a task's process, and the driver's GPU checks (no GPU, no Spark job).

The standalone cluster test (tests/test_cluster.py) runs the same code on executors whose
Workers advertise fake GPUs; here each part runs alone, against plain values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import keras
import pytest

from distkeras_async.errors import DeviceError, InsufficientSlotsError
from distkeras_async.spark import resources
from distkeras_async.spark.resources import GpuConfig
from distkeras_async.worker.devices import (
    BOUND,
    VISIBLE,
    bind_devices,
    device_of,
    model_device,
    task_devices,
)

# --- binding a process --------------------------------------------------------------------


def test_a_gpu_task_sees_exactly_its_addresses_with_memory_growth():
    env: dict[str, str] = {VISIBLE: "0,1,2,3"}  # what the node would show unrestricted
    assert bind_devices(["2", "3"], environ=env, keras_loaded=False) == "2,3"
    assert env[VISIBLE] == "2,3" and env[BOUND] == "2,3"
    # Tasks sharing one GPU must not each reserve most of its memory up front.
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "JAX_PLATFORMS" not in env


def test_a_cpu_task_hides_every_gpu_and_keeps_the_users_settings():
    env = {"JAX_PLATFORMS": "cpu,cuda", "TF_FORCE_GPU_ALLOW_GROWTH": "false"}
    assert bind_devices([], environ=env, keras_loaded=False) == ""
    assert env[VISIBLE] == "" and env[BOUND] == ""
    assert env["JAX_PLATFORMS"] == "cpu,cuda"  # the user's own, kept
    env2: dict[str, str] = {}
    bind_devices([], environ=env2, keras_loaded=False)
    assert env2["JAX_PLATFORMS"] == "cpu"


def test_a_reused_process_serves_the_same_addresses_and_refuses_others():
    env: dict[str, str] = {}
    bind_devices(["1"], environ=env, keras_loaded=False)
    before = dict(env)
    assert bind_devices(["1"], environ=env, keras_loaded=True) == "1"
    for other in (["0"], ["1", "2"], []):
        with pytest.raises(DeviceError, match=r"GPUs 1 visible.*spark\.python\.worker\.reuse"):
            bind_devices(other, environ=env, keras_loaded=True)
    assert env == before  # a refused binding changes nothing


def test_keras_imported_unbound_refuses_gpus_but_lets_a_cpu_task_run():
    env: dict[str, str] = {}
    with pytest.raises(DeviceError, match="every GPU visible"):
        bind_devices(["0"], environ=env, keras_loaded=True)
    assert env == {}
    # A CPU task goes on; its history records the device it really used.
    assert bind_devices([], environ=env, keras_loaded=True) == ""
    assert env == {}


@pytest.mark.slow
def test_the_backend_reads_the_binding_when_keras_is_imported():
    # A fresh interpreter, as a Spark Python worker: bind, then import Keras; TensorFlow
    # runs there with exactly that environment, and a second binding is refused.
    code = """
import json, os
from distkeras_async.worker.backend import limit_threads
from distkeras_async.worker.devices import bind_devices
from distkeras_async.errors import DeviceError
bind_devices(["3"])
limit_threads(1)  # what a worker does next, with its task's cores
import keras, tensorflow as tf
out = {"visible": os.environ["CUDA_VISIBLE_DEVICES"], "backend": keras.backend.backend(),
       "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
       "threads": tf.config.threading.get_intra_op_parallelism_threads()}
try:
    bind_devices(["0"])
except DeviceError as exc:
    out["refused"] = str(exc)
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in (VISIBLE, BOUND)}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["visible"] == "3" and out["backend"] == "tensorflow"
    assert out["gpus"] == []  # this machine has no GPU 3 (nor any other)
    assert out["threads"] == 1  # a GPU task still limits its CPU threads
    assert "GPUs 3 visible" in out["refused"]


def test_task_devices_follow_the_runs_choice():
    assert task_devices(["0"], use_gpu=True) == ["0"]
    assert task_devices(["0"], use_gpu=False) == []  # given a GPU, told to use the CPU
    assert task_devices([], use_gpu=False) == []
    with pytest.raises(DeviceError, match="gave this task none"):
        task_devices([], use_gpu=True)


def test_the_device_used_is_read_from_the_backend():
    assert device_of(SimpleNamespace(device="/job:localhost/replica:0/task:0/device:GPU:1")) == (
        "gpu:1"
    )
    assert device_of(SimpleNamespace(device="cuda:0")) == "cuda:0"  # PyTorch, JAX
    assert device_of(SimpleNamespace(device=lambda: "TPU_0")) == "tpu_0"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert model_device(model) == "cpu:0"  # TensorFlow on this machine
    assert model_device(keras.Sequential()) == "cpu"


# --- the driver's checks --------------------------------------------------------------------


class FakeSpark:
    """What the checks read of a SparkSession: its conf, master, parallelism, executors."""

    def __init__(self, conf: dict[str, str], master: str = "spark://h:7077", executors: int = 2):
        memory = SimpleNamespace(size=lambda: executors + 1)  # + the driver's block manager
        scala = SimpleNamespace(getExecutorMemoryStatus=lambda: memory)
        self.sparkContext = SimpleNamespace(
            getConf=lambda: SimpleNamespace(get=lambda k, d=None: conf.get(k, d)),
            master=master,
            defaultParallelism=executors * int(conf.get("spark.executor.cores", "1")),
            _jsc=SimpleNamespace(sc=lambda: scala),
        )


def gpus(task: str, executor: str, **conf: str) -> dict[str, str]:
    return {resources.TASK_GPUS: task, resources.EXECUTOR_GPUS: executor, **conf}


@pytest.mark.parametrize(
    ("task", "executor", "slots", "varies"),
    [
        ("1", "1", 1, False),
        ("0.25", "1", 4, False),  # four tasks share one GPU
        ("1", "2", 2, True),
        ("0.5", "2", 4, True),
        ("2", "2", 1, False),
        ("2", "5", 2, True),
        ("0", "4", 0, False),
    ],
)
def test_gpu_slots_per_executor(task, executor, slots, varies):
    config = GpuConfig(Fraction(task), Fraction(executor))
    assert config.slots_per_executor == slots
    assert config.varies_per_task == varies


def test_use_gpu_is_resolved_on_the_driver():
    on_gpus = FakeSpark(gpus("1", "1"))
    assert resources.resolve_use_gpu(on_gpus, None) is True
    assert resources.resolve_use_gpu(on_gpus, True) is True
    assert resources.resolve_use_gpu(on_gpus, False) is False
    no_gpus = FakeSpark({})
    assert resources.resolve_use_gpu(no_gpus, None) is False
    assert resources.resolve_use_gpu(no_gpus, False) is False
    with pytest.raises(DeviceError, match=r"use_gpu=True, but spark\.task\.resource\.gpu"):
        resources.resolve_use_gpu(no_gpus, True)


def test_local_mode_with_gpu_tasks_fails_instead_of_waiting_forever():
    for use_gpu in (None, True, False):
        with pytest.raises(DeviceError, match="local mode"):
            resources.resolve_use_gpu(FakeSpark(gpus("1", "1"), master="local[2]"), use_gpu)


def test_executors_whose_tasks_get_different_gpus_need_fresh_python_workers():
    with pytest.raises(DeviceError, match=r"2 GPUs and each task gets 1.*reuse=false"):
        resources.resolve_use_gpu(FakeSpark(gpus("1", "2")), None)
    fresh = gpus("1", "2", **{resources.REUSE: "false"})
    assert resources.resolve_use_gpu(FakeSpark(fresh), None) is True
    # Told to use the CPU, the tasks' GPUs do not matter.
    assert resources.resolve_use_gpu(FakeSpark(gpus("1", "2")), False) is False


def test_bad_amounts_are_named():
    with pytest.raises(DeviceError, match=r"spark\.task\.resource\.gpu\.amount must be a number"):
        resources.resolve_use_gpu(FakeSpark(gpus("one", "1")), None)


def test_barrier_slots_count_gpus():
    # 2 executors with 4 cores each but one GPU each, one GPU per task: 2 slots, not 8.
    spark: Any = FakeSpark(gpus("1", "1", **{"spark.executor.cores": "4"}))
    assert resources.available_slots(spark) == 8
    assert resources.available_slots(spark, use_gpu=True) == 2
    resources.check_barrier_slots(spark, 2, use_gpu=True)
    resources.check_barrier_slots(spark, 8, use_gpu=False)
    with pytest.raises(InsufficientSlotsError) as info:
        resources.check_barrier_slots(spark, 3, use_gpu=True)
    message = str(info.value)
    assert "all 3 workers" in message and "has 2 task slot(s)" in message
    assert "8 by cores, 2 executor(s) x 1 by GPUs" in message
    # Fractional amounts: two tasks per GPU.
    shared: Any = FakeSpark(gpus("0.5", "1", **{"spark.executor.cores": "4"}))
    assert resources.available_slots(shared, use_gpu=True) == 4
