"""Checkpoints: atomic, pickle-free files of the center, written by the server, resumed from."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import wait_until

from distkeras_async import ParameterServer, ParameterServerClient
from distkeras_async.errors import ErrorCode
from distkeras_async.layout import Layout
from distkeras_async.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

LAYOUT = Layout.of([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)])


def test_round_trip_and_atomic_replacement(tmp_path):
    path = tmp_path / "ckpt" / "center.npz"
    first = Checkpoint(np.arange(10, dtype=np.float32), 7, LAYOUT, "downpour", {"w": 5})
    save_checkpoint(path, first)
    save_checkpoint(path, Checkpoint(np.ones(10, np.float32), 9, LAYOUT, "downpour", {"w": 5}))
    loaded = load_checkpoint(path, LAYOUT)
    assert loaded.version == 9 and loaded.algorithm == "downpour"
    assert loaded.hyperparameters == {"w": 5} and loaded.layout == LAYOUT
    np.testing.assert_array_equal(loaded.center, np.ones(10))
    assert sorted(p.name for p in path.parent.iterdir()) == ["center.npz"]  # no temp files


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        load_checkpoint(garbage)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, center=np.array([object()], dtype=object), meta=np.array("{}"))
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)  # object arrays would need pickle: refused
    good = tmp_path / "good.npz"
    save_checkpoint(good, Checkpoint(np.zeros(10, np.float32), 1, LAYOUT, "downpour", {}))
    other = Layout.of([np.zeros(10, np.float32)])
    with pytest.raises(CheckpointError, match="10 parameters in 2 tensors"):
        load_checkpoint(good, other)


def damage(path, how):
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # bytes flipped inside the center's data, the zip's directory left intact
        middle = len(data) // 3
        path.write_bytes(
            data[:middle]
            + bytes(b ^ 0xFF for b in data[middle : middle + 64])
            + data[middle + 64 :]
        )


@pytest.mark.parametrize(
    ("how", "what"),
    [
        ("empty", "No data left in file|not a zip file"),
        ("truncated", "not a zip file|EOF|truncated|No data"),
        ("corrupted", "CRC|Bad magic|not a zip file"),
    ],
)
def test_a_damaged_checkpoint_is_a_checkpoint_error_naming_the_path(tmp_path, secret, how, what):
    path = tmp_path / "center.npz"
    weights = np.zeros(100_000, np.float32)  # the center's bytes are most of the file
    save_checkpoint(path, Checkpoint(weights, 3, Layout.of([weights]), "downpour", {}))
    damage(path, how)
    with pytest.raises(CheckpointError, match=f"{path} is not a valid checkpoint: .*({what})"):
        load_checkpoint(path)
    # What resume_from meets: the same error, before the server starts.
    with pytest.raises(CheckpointError, match=str(path)):
        ParameterServer([weights], "downpour", num_workers=1, secret=secret, resume_from=path)


def test_an_unwritable_checkpoint_path_is_refused_before_the_server_starts(tmp_path, secret):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "center.npz"
    weights = [np.zeros(10, np.float32)]
    with pytest.raises(CheckpointError, match=f"cannot write checkpoints to {path}"):
        ParameterServer(
            weights,
            "downpour",
            num_workers=1,
            secret=secret,
            checkpoint_path=path,
            checkpoint_every=1,
        )
    # A writable path is probed and the probe removed: nothing is left before a checkpoint.
    good = tmp_path / "run" / "center.npz"
    ParameterServer(
        weights, "downpour", num_workers=1, secret=secret, checkpoint_path=good, checkpoint_every=1
    )
    assert list(good.parent.iterdir()) == []


def test_failed_checkpoints_warn_at_once_and_fail_the_run_after_three(tmp_path, secret, caplog):
    folder = tmp_path / "run"
    server = ParameterServer(
        [np.zeros(10, np.float32)],
        "downpour",
        num_workers=1,
        secret=secret,
        checkpoint_path=folder / "center.npz",
        checkpoint_every=1,
    )
    server.start()
    try:
        # The disk goes away under the run: the folder becomes a regular file.
        folder.rmdir()
        folder.write_text("not a folder any more")
        client = ParameterServerClient("127.0.0.1", server.port, secret, 0, timeout=20)
        with client, caplog.at_level("WARNING", logger="distkeras_async.server.checkpoint"):
            for failures in (1, 2):
                client.commit(np.ones(10, np.float32))
                wait_until(lambda n=failures: server.checkpointer.failures == n)
                assert f"failed ({failures} in a row; the run fails after 3)" in caplog.text
                assert str(folder / "center.npz") in caplog.text
            assert server.failure_code is None  # two failures: the run goes on
            client.commit(np.ones(10, np.float32))
            wait_until(lambda: server.failure_code is ErrorCode.CHECKPOINT_FAILED)
            with pytest.raises(
                CheckpointError, match="3 checkpoints in a row could not be written"
            ):
                client.commit_pull(np.ones(10, np.float32))
    finally:
        server.stop()


def test_server_checkpoints_every_n_updates_and_resumes(tmp_path, secret):
    path = tmp_path / "center.npz"
    weights = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    server = ParameterServer(
        weights,
        "downpour",
        num_workers=1,
        secret=secret,
        checkpoint_path=path,
        checkpoint_every=3,
    )
    port = server.start()
    try:
        with ParameterServerClient("127.0.0.1", port, secret, 0, timeout=10) as client:
            for _ in range(7):
                client.commit(np.ones(10, np.float32))
        # Every 3 updates: version 6, or 7 when the write of 3 was still running at 6.
        wait_until(lambda: path.exists() and load_checkpoint(path).version >= 6)
        assert server.checkpoint() == 7  # an explicit one, now
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if "asyncio" in t.name or "ThreadPool" in t.name]
    saved = load_checkpoint(path)
    assert saved.version == 7
    np.testing.assert_array_equal(saved.center, np.full(10, 7.0))

    resumed = ParameterServer(weights, "downpour", num_workers=1, secret=secret, resume_from=path)
    assert resumed.version == 7
    port = resumed.start()
    try:
        with ParameterServerClient("127.0.0.1", port, secret, 0, timeout=10) as client:
            assert client.version == 7
            np.testing.assert_array_equal(client.commit_pull(np.ones(10, np.float32)), 8.0)
        assert resumed.version == 8
    finally:
        resumed.stop()


def test_time_based_checkpoints_and_validation(tmp_path, secret):
    weights = [np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match="checkpoint_every"):
        ParameterServer(
            weights, "downpour", num_workers=1, secret=secret, checkpoint_path=tmp_path / "c.npz"
        )
    path = tmp_path / "timed.npz"
    server = ParameterServer(
        weights,
        "downpour",
        num_workers=1,
        secret=secret,
        checkpoint_path=path,
        checkpoint_interval=0.2,
    )
    port = server.start()
    try:
        with ParameterServerClient("127.0.0.1", port, secret, 0, timeout=10) as client:
            client.commit(np.ones(3, np.float32))
            wait_until(lambda: path.exists() and load_checkpoint(path).version == 1)
            client.commit(np.ones(3, np.float32))
            wait_until(lambda: load_checkpoint(path).version == 2)
    finally:
        server.stop()


def _random_checkpoint(path, algorithm="downpour", hyperparameters=None, version=41):
    layout = Layout.of([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)])
    rng = np.random.default_rng(3)
    center = rng.normal(size=10).astype(np.float32) * 1e3  # nothing a fresh model would hold
    save_checkpoint(
        path,
        Checkpoint(
            center,
            version,
            layout,
            algorithm,
            {"communication_window": 5} if hyperparameters is None else hyperparameters,
        ),
    )
    return center


def test_a_resumed_server_starts_from_the_checkpoint_bit_for_bit(tmp_path, secret):
    path = tmp_path / "c.npz"
    center = _random_checkpoint(path)
    weights = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    with (
        ParameterServer(
            weights, "downpour", num_workers=1, secret=secret, resume_from=path
        ) as server,
        ParameterServerClient("127.0.0.1", server.port, secret, 0, timeout=10) as client,
    ):
        assert client.version == 41
        assert client.pull().tobytes() == center.tobytes()


@pytest.mark.parametrize(
    ("algorithm", "hyperparameters", "message"),
    [
        ("averaging", {}, r"written by algorithm 'downpour'; this run uses 'averaging'"),
        (
            "downpour",
            {"communication_window": 7},
            r"communication_window: 5 in the checkpoint, 7 now",
        ),
    ],
)
def test_resuming_with_another_algorithm_or_hyperparameters_is_refused(
    tmp_path, secret, algorithm, hyperparameters, message
):
    path = tmp_path / "c.npz"
    _random_checkpoint(path)
    weights = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    with pytest.raises(CheckpointError, match=message):
        ParameterServer(
            weights, algorithm, num_workers=1, secret=secret, resume_from=path, **hyperparameters
        )


@pytest.mark.parametrize("setting", ["commit_dtype", "pull_dtype"])
def test_a_run_may_resume_with_another_commit_or_pull_dtype(tmp_path, secret, setting):
    # The checkpoint predates both (it has only communication_window); how updates and
    # centers travel does not change what the rule computes.
    path = tmp_path / "c.npz"
    center = _random_checkpoint(path)
    weights = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    with (
        ParameterServer(
            weights,
            "downpour",
            num_workers=1,
            secret=secret,
            resume_from=path,
            **{setting: "int8"},
        ) as server,
        ParameterServerClient("127.0.0.1", server.port, secret, 0, timeout=10) as client,
    ):
        assert getattr(client, setting) == "int8"
        assert client.pull().tobytes() == center.tobytes()


def test_a_synchronous_run_resumes_and_its_rounds_continue(tmp_path, secret):
    path = tmp_path / "sync.npz"
    center = _random_checkpoint(path, "averaging", {"communication_window": 5}, version=9)
    weights = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    with ParameterServer(
        weights, "averaging", num_workers=2, secret=secret, resume_from=path
    ) as server:
        clients = [
            ParameterServerClient("127.0.0.1", server.port, secret, w, timeout=10) for w in range(2)
        ]
        assert clients[0].pull().tobytes() == center.tobytes()
        replies = {}
        threads = [
            threading.Thread(
                target=lambda w=w: replies.__setitem__(
                    w, clients[w].commit_pull(np.full(10, float(w + 1), np.float32))
                )
            )
            for w in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        np.testing.assert_array_equal(replies[0], np.full(10, 1.5))  # the round's mean
        assert server.version == 10  # version 9 plus one round
        for client in clients:
            client.close()
