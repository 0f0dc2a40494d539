"""Partitions beyond memory: the spool, exact shuffled epochs, the Keras feed, bad data.

Unit tests of the parts (no Spark); the end-to-end runs on Spark are in
``test_streaming_spark.py``, the memory bound in ``test_stream_memory.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from distkeras_async.errors import ColumnError, InputDataError
from distkeras_async.worker.columns import column_to_numpy
from distkeras_async.worker.feed import fit_input
from distkeras_async.worker.keras_worker import KerasWorker, train_worker
from distkeras_async.worker.partition import Partition, spool
from distkeras_async.worker.plan import Endpoint, WorkerPlan
from distkeras_async.worker.sources import StreamSource
from distkeras_async.worker.stream import EpochStream, epoch_windows


def id_batches(rows: int, per_batch: int = 1000, width: int = 4):
    """Arrow batches as Spark sends them: an id column and a feature array."""
    for start in range(0, rows, per_batch):
        ids = np.arange(start, min(rows, start + per_batch), dtype=np.float32)
        features = np.repeat(ids[:, None], width, axis=1)
        yield pa.RecordBatch.from_arrays(
            [pa.array(ids), pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), width)],
            names=["id", "x"],
        )


def decode(block: pa.RecordBatch, first_row: int) -> list[np.ndarray]:
    return [column_to_numpy(c, first_row=first_row) for c in block.columns]


def stream_of(partition: Partition, *, batch_size=32, window_rows=500, shuffle=True):
    return EpochStream(
        partition,
        decode,
        batch_size=batch_size,
        window_rows=window_rows,
        shuffle=shuffle,
        seed=7,
        worker=1,
    )


# -- the spool ---------------------------------------------------------------------------


def test_a_small_partition_stays_in_memory(tmp_path):
    with spool(id_batches(3000), ["id"], limit=1 << 20, directory=str(tmp_path)) as part:
        assert part.in_memory and part.num_rows == 3000
        assert os.listdir(tmp_path) == []


def test_a_large_partition_is_written_to_the_local_directory_and_removed(tmp_path):
    with spool(
        id_batches(20_000), ["x", "id"], limit=10_000, directory=str(tmp_path), block_bytes=4096
    ) as part:
        assert not part.in_memory
        assert os.listdir(tmp_path) == [os.path.basename(part.path)]
        assert part.num_rows == 20_000 and len(part) > 20  # cut into ~4 KiB blocks
        assert part.columns == ("x", "id")
        ids = np.concatenate([column_to_numpy(part.block(i).column(1)) for i in range(len(part))])
        np.testing.assert_array_equal(ids, np.arange(20_000))
    assert os.listdir(tmp_path) == []


def test_the_spool_file_is_removed_when_training_fails(tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        spool(id_batches(5000), ["id"], limit=0, directory=str(tmp_path)) as part,
    ):
        assert os.listdir(tmp_path)
        raise RuntimeError("boom")
    assert part.path is not None
    assert os.listdir(tmp_path) == []


def test_the_spool_file_is_removed_when_the_disk_fills(tmp_path, monkeypatch):
    """A full disk fails the spool's writes and then its close: the first error is raised,
    and the file is deleted anyway (docs/data.md)."""
    real_new_file = pa.ipc.new_file

    class FullDisk:
        def __init__(self, path, schema):
            self.inner = real_new_file(path, schema)  # the file exists, as on a real disk
            self.written = 0

        def write_batch(self, batch):
            self.written += 1
            if self.written > 2:
                raise OSError(28, "No space left on device")
            self.inner.write_batch(batch)

        def close(self):
            self.inner.close()
            raise OSError(28, "No space left on device (on close)")

    monkeypatch.setattr(pa.ipc, "new_file", FullDisk)
    with (
        pytest.raises(OSError, match=r"No space left on device$"),
        spool(id_batches(5000), ["id"], limit=0, directory=str(tmp_path), block_bytes=4096),
    ):
        pass
    assert os.listdir(tmp_path) == []


def test_the_spool_file_is_removed_when_the_input_fails(tmp_path):
    def failing():
        yield from id_batches(3000)
        raise OSError("the shuffle read failed")

    with (
        pytest.raises(OSError, match="shuffle read"),
        spool(failing(), ["id"], limit=0, directory=str(tmp_path)),
    ):
        pass
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("value", "row"), [(12.0, 3), (-1.0, 0), (2.5, 4), (np.nan, 1)])
def test_class_indices_outside_the_outputs_are_named_with_their_row(value, row):
    from distkeras_async.worker.labels import check_class_indices

    labels = np.array([0, 1, 9, 5, 3], np.float32)
    check_class_indices(labels, "y", 10, "worker 1 (attempt 0)", first_row=100)  # all good
    labels[row] = value
    with pytest.raises(InputDataError) as caught:
        check_class_indices(labels, "y", 10, "worker 1 (attempt 0)", first_row=100)
    assert f"worker 1 (attempt 0): column 'y' holds {value:g} at row {100 + row}" in str(
        caught.value
    )
    assert "from 0 to 9" in str(caught.value)


def test_a_missing_column_is_named():
    with (
        pytest.raises(ColumnError, match="'label' is not in the data"),
        spool(id_batches(10), ["id", "label"]),
    ):
        pass


# -- exact epochs ------------------------------------------------------------------------


@pytest.fixture
def spooled(tmp_path):
    with spool(
        id_batches(5003), ["id", "x"], limit=0, directory=str(tmp_path), block_bytes=2000
    ) as part:
        yield part


def epoch_ids(stream: EpochStream, epoch: int, skip_rows: int = 0) -> list[np.ndarray]:
    return [chunk[0] for chunk in stream.chunks(epoch, skip_rows)]


def test_every_row_is_seen_exactly_once_per_epoch(spooled):
    stream = stream_of(spooled)
    orders = []
    for epoch in range(4):
        chunks = epoch_ids(stream, epoch)
        ids = np.concatenate(chunks)
        assert np.array_equal(np.sort(ids), np.arange(5003)), "a row missing or twice"
        assert all(len(c) % 32 == 0 for c in chunks[:-1]), "a chunk cuts a batch"
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1]), "the epochs are not reshuffled"
    assert not np.array_equal(orders[0], np.arange(5003))
    # Rows of a row's chunk stay with their features (the columns are permuted together).
    chunk = next(stream.chunks(0))
    np.testing.assert_array_equal(chunk[1][:, 0], chunk[0])


def test_the_order_depends_only_on_seed_worker_and_epoch(spooled):
    first = np.concatenate(epoch_ids(stream_of(spooled), 2))
    again = np.concatenate(epoch_ids(stream_of(spooled), 2))
    np.testing.assert_array_equal(first, again)


def test_skipping_rows_continues_the_same_order(spooled):
    stream = stream_of(spooled)
    whole = np.concatenate(epoch_ids(stream, 1))
    for skip in (32, 480, 512, 4992):
        rest = np.concatenate(epoch_ids(stream, 1, skip))
        np.testing.assert_array_equal(rest, whole[skip:])


def test_without_shuffle_the_partition_order_is_kept(spooled):
    ids = np.concatenate(epoch_ids(stream_of(spooled, shuffle=False), 0))
    np.testing.assert_array_equal(ids, np.arange(5003))


def test_windows_mix_sorted_data():
    """On rows sorted by label, a window of many blocks holds nearly every label."""
    blocks = np.full(1000, 100)  # 100,000 rows sorted into 10 label runs of 100 blocks
    labels_of_block = np.arange(1000) // 100
    windows = epoch_windows(blocks, window_rows=6400, shuffle=True, seed=0, worker=0, epoch=0)
    assert sum(len(w) for w in windows) == 1000
    assert sorted(np.concatenate(windows)) == list(range(1000))
    labels = [len(set(labels_of_block[w])) for w in windows]
    assert min(labels) >= 9, labels
    unshuffled = epoch_windows(blocks, window_rows=6400, shuffle=False, seed=0, worker=0, epoch=0)
    assert max(len(set(labels_of_block[w])) for w in unshuffled) <= 2


def test_the_batches_of_a_resumed_stream_are_the_rest_of_the_whole(spooled):
    stream = stream_of(spooled)

    def prepared(chunk):
        return [chunk[1]], [chunk[0]], None

    source = StreamSource(stream, prepared, num_epoch=2)
    whole = [b[1] for b in source.batches(0)]
    assert len(whole) == 2 * -(-5003 // 32)
    rest = [b[1] for b in source.batches(200)]
    assert len(rest) == len(whole) - 200
    for a, b in zip(rest, whole[200:], strict=True):
        np.testing.assert_array_equal(a, b)


# -- the Keras feed ----------------------------------------------------------------------


def test_keras_fit_consumes_every_streamed_row_once_per_epoch(spooled):
    """``model.fit`` on the feed, several epochs: every row once per epoch, in order."""
    import keras

    seen: list[np.ndarray] = []

    class Recording(keras.Model):
        def train_step(self, data):
            _, y = data
            seen.append(np.asarray(y))
            return {"rows": keras.ops.convert_to_tensor(float(len(y)))}

    inputs = keras.Input((4,))
    model = Recording(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    stream = stream_of(spooled)
    source = StreamSource(stream, lambda c: ([c[1]], [c[0]], None), num_epoch=3)
    (call,) = source.fit_calls(0)
    model.fit(**call, shuffle=False, verbose=0)
    assert len(seen) == 3 * source.per_epoch
    for epoch in range(3):
        ids = np.concatenate(seen[epoch * source.per_epoch : (epoch + 1) * source.per_epoch])
        np.testing.assert_array_equal(ids, np.concatenate(epoch_ids(stream, epoch)))


def test_the_feed_keeps_several_inputs_and_weights():
    chunks = [
        ((np.ones((4, 2), np.float32), np.zeros((4, 3), np.float32)), np.arange(4.0), np.ones(4))
    ]
    batches = list(fit_input(iter(chunks), 3).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [3, 1]
    (x1, x2), _, w = batches[0]
    assert x1.shape == (3, 2) and x2.shape == (3, 3) and w.shape == (3,)


# -- bad data, found before any step -------------------------------------------------------


def plan_for(server, spec_json, secret, **kwargs) -> WorkerPlan:
    kwargs.setdefault("features_col", ("x",))
    kwargs.setdefault("label_col", ("y",))
    return WorkerPlan.create(
        spec_json, "downpour", Endpoint("127.0.0.1", (server.port,), secret), **kwargs
    )


@pytest.fixture
def small_model():
    import keras

    from distkeras_async.worker.serialization import describe_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    return model, describe_model(model, "sgd", "mse").to_json()


def xy_batches(rows: int, bad_row: int | None = None, bad=None, per_batch: int = 500):
    for start in range(0, rows, per_batch):
        count = min(per_batch, rows - start)
        x = [[float(start + i)] * 4 for i in range(count)]
        if bad_row is not None and start <= bad_row < start + count:
            x[bad_row - start] = bad
        yield pa.RecordBatch.from_pydict(
            {"x": pa.array(x, pa.list_(pa.float32())), "y": pa.array(np.ones(count))}
        )


@pytest.mark.parametrize("limit", [0, 1 << 30], ids=["streamed", "in-memory"])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, r"column 'x' has 1 null value\(s\), the first at row 3210"),
        ([1.0, 2.0, 3.0], "column 'x'.* row 3210 has 3 value\\(s\\) where 4 are expected"),
        ([1.0, float("nan"), 3.0, 4.0], "column 'x' has NaN or infinity at row 3210"),
    ],
    ids=["null", "shorter", "nan"],
)
def test_bad_rows_deep_in_a_partition_fail_before_any_step(
    make_server, secret, small_model, tmp_path, limit, bad, message
):
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret, in_memory_limit=limit)
    batches = xy_batches(5000, 3210, bad)
    with (
        spool(batches, ["x", "y"], limit=limit, directory=str(tmp_path)) as partition,
        pytest.raises(InputDataError, match=message) as caught,
    ):
        train_worker(plan, 0, 0, partition)
    assert "worker 0 (attempt 0)" in str(caught.value)
    assert server.stats().version == 0, "a step was trained before the bad row was found"


def test_a_row_wider_than_the_rows_before_in_another_block(
    make_server, secret, small_model, tmp_path
):
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret, in_memory_limit=0)

    def batches():
        yield from xy_batches(1000)
        yield pa.RecordBatch.from_pydict(
            {"x": pa.array([[1.0] * 5], pa.list_(pa.float32())), "y": [1.0]}
        )

    with (
        spool(batches(), ["x", "y"], limit=0, directory=str(tmp_path)) as partition,
        pytest.raises(InputDataError, match=r"column 'x' has rows of shape \(5,\) from row 1000"),
    ):
        train_worker(plan, 0, 0, partition)


class ScalingWorker(KerasWorker):
    prepares_columns = False  # scaling keeps the shapes: the checks stay

    def prepare(self, model, x, y):
        x, y = super().prepare(model, x, y)
        return [features / 2.0 for features in x], y


@pytest.mark.parametrize("worker_class", [None, ScalingWorker], ids=["default", "declared"])
def test_rows_that_do_not_fit_the_models_input_fail_before_any_step(
    make_server, secret, small_model, tmp_path, worker_class
):
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret, in_memory_limit=0, worker_class=worker_class)
    wide = pa.RecordBatch.from_pydict(
        {"x": pa.array([[1.0] * 5] * 10, pa.list_(pa.float32())), "y": np.ones(10)}
    )
    with (
        spool([wide], ["x", "y"], limit=0, directory=str(tmp_path)) as partition,
        pytest.raises(InputDataError, match=r"'x' has 5 value\(s\) per row from row 0 on.* 4"),
    ):
        train_worker(plan, 0, 0, partition)
    assert server.stats().version == 0


def test_a_binary_column_needs_a_decoder(make_server, secret, small_model, tmp_path):
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret)
    batch = pa.RecordBatch.from_pydict({"x": pa.array([b"\x00" * 16] * 3), "y": [1.0, 2.0, 3.0]})
    with (
        spool([batch], ["x", "y"], directory=str(tmp_path)) as partition,
        pytest.raises(InputDataError, match=r"'x' holds bytes.*decode_column"),
    ):
        train_worker(plan, 0, 0, partition)


class BytesWorker(KerasWorker):
    """Decodes four little-endian float32 per row from a binary column."""

    def decode_column(self, name, column, first_row):
        if pa.types.is_binary(column.type):
            return np.stack([np.frombuffer(v, "<f4") for v in column.to_pylist()])
        return super().decode_column(name, column, first_row)


@pytest.mark.parametrize("limit", [0, 1 << 30], ids=["streamed", "in-memory"])
def test_a_worker_decodes_binary_rows_per_block(make_server, secret, small_model, tmp_path, limit):
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret, worker_class=BytesWorker, in_memory_limit=limit, epochs=2)
    rows = 300
    x = np.random.default_rng(0).random((rows, 4), dtype=np.float32)
    batch = pa.RecordBatch.from_pydict(
        {"x": pa.array([r.astype("<f4").tobytes() for r in x]), "y": x.sum(axis=1)}
    )
    with spool([batch], ["x", "y"], limit=limit, directory=str(tmp_path)) as partition:
        history = train_worker(plan, 0, 0, partition)
    assert len(history) == 2 * -(-rows // 32)


class CustomBatches(KerasWorker):
    def batches(self, x, y, sample_weight=None):
        return super().batches(x, y, sample_weight)


def test_a_custom_batches_hook_refuses_a_partition_beyond_the_limit(
    make_server, secret, small_model, tmp_path
):
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret, worker_class=CustomBatches, in_memory_limit=100)
    with (
        spool(xy_batches(1000), ["x", "y"], limit=100, directory=str(tmp_path)) as partition,
        pytest.raises(InputDataError, match=r"in_memory_limit=100.*CustomBatches overrides"),
    ):
        train_worker(plan, 0, 0, partition)


@pytest.mark.parametrize("limit", [0, 1 << 30], ids=["streamed", "in-memory"])
def test_a_partition_whose_rows_do_not_fit_the_model_fails_before_any_step(
    make_server, secret, small_model, tmp_path, limit
):
    """The driver checks the DataFrame's first row; another partition is checked here."""
    model, spec = small_model
    server = make_server(model.get_weights(), num_workers=1)
    plan = plan_for(server, spec, secret, in_memory_limit=limit)
    batch = pa.RecordBatch.from_pydict(
        {"x": pa.array([[1.0] * 5] * 100, pa.list_(pa.float32())), "y": np.ones(100)}
    )
    with (
        spool([batch], ["x", "y"], limit=limit, directory=str(tmp_path)) as partition,
        pytest.raises(
            InputDataError,
            match=r"'x' has 5 value\(s\) per row from row 0 on, but the model's input takes 4",
        ),
    ):
        train_worker(plan, 0, 0, partition)
    assert server.stats().version == 0
