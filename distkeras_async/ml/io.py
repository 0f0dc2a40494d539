"""Saving and loading Spark ML stages that hold a Keras model: JSON Params plus a ``.keras`` file.

Spark's ``DefaultParamsWriter`` stores every Param as JSON, which a Keras model is not. These
writers store the JSON-able Params the Spark way (``path/metadata``, readable by
``Pipeline.load``) and the Keras model in Keras' own format at ``path/model.keras``: the
architecture as JSON and the weights as HDF5 inside a zip, nothing pickled. The file goes
through Hadoop's ``FileSystem`` API, so ``path`` may be on any file system Spark can write to
(local, HDFS, S3, ...), like Spark's own model files.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Generic, TypeVar, cast

from pyspark.ml.param import Params
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import SparkSession

MODEL_PARAM = "model"
MODEL_FILE = "model.keras"

P = TypeVar("P", bound="MLReadable[Any]")


def _hadoop_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """``(FileSystem, Path)`` for ``path`` through the JVM (a classic Spark session)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    target = jvm.org.apache.hadoop.fs.Path(path)
    # The session's Hadoop configuration, as Spark's DataFrame writer (which writes the
    # metadata) uses: it includes settings made at run time, such as S3 credentials.
    conf = spark._jsparkSession.sessionState().newHadoopConf()
    return target.getFileSystem(conf), target


def copy_to(spark: SparkSession, local: str, path: str) -> None:
    """Copy the local file ``local`` to ``path`` (any Hadoop file system), replacing it."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    fs, target = _hadoop_path(spark, path)
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(local), target)


def load_keras_model(spark: SparkSession, path: str) -> Any:
    """Load a ``.keras`` file from ``path`` (any Hadoop file system).

    Keras' safe mode is on: a file cannot make loading run arbitrary code (such as a
    ``Lambda`` layer's bytecode). The model is not compiled: prediction does not need it, and
    training rebuilds it from the estimator's Params, so custom losses and metrics are not
    needed here. Custom layers resolve through an enclosing
    ``keras.saving.custom_object_scope`` or Keras' registered serializables.
    """
    import keras

    jvm = spark.sparkContext._jvm
    assert jvm is not None
    with tempfile.TemporaryDirectory(prefix="distkeras-load-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        fs, source = _hadoop_path(spark, path)
        if not fs.exists(source):
            raise FileNotFoundError(f"no Keras model at {path}")
        # The raw local file system: no .crc checksum file next to the copy.
        fs.copyToLocalFile(False, source, jvm.org.apache.hadoop.fs.Path(local), True)
        return keras.saving.load_model(local, compile=False, safe_mode=True)


# Params the metadata leaves out: the model (saved beside it) and the callbacks.
NOT_SAVED = frozenset({MODEL_PARAM, "callbacks"})


class KerasParamsWriter(MLWriter):
    """Writes a stage's Params as Spark metadata and its ``model`` Param as a ``.keras`` file."""

    def __init__(self, instance: Params) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:  # noqa: N802 - Spark's name
        """Write ``path/metadata`` and, when the model is set, ``path/model.keras``."""
        fs, target = _hadoop_path(self.sparkSession, path)
        if not self.shouldOverwrite and fs.exists(target):
            raise FileExistsError(
                f"{path} already exists; use write().overwrite().save(path) to replace it"
            )
        instance = self.instance
        # The model is written as a .keras file; callbacks are live Python objects, not saved.
        params = {
            p.name: value for p, value in instance._paramMap.items() if p.name not in NOT_SAVED
        }
        model = instance.getOrDefault(MODEL_PARAM) if instance.isDefined(MODEL_PARAM) else None
        with tempfile.TemporaryDirectory(prefix="distkeras-save-") as tmp:
            local = os.path.join(tmp, MODEL_FILE)
            if model is not None:
                # First, so that a model Keras cannot save leaves nothing behind at ``path``.
                model.save(local)
            DefaultParamsWriter.saveMetadata(
                instance,
                path,
                self.sparkSession,
                extraMetadata={"kerasModel": MODEL_FILE if model is not None else None},
                paramMap=params,
            )
            if model is not None:
                copy_to(self.sparkSession, local, os.path.join(path, MODEL_FILE))


class KerasParamsReader(MLReader[P], Generic[P]):
    """Reads what :class:`KerasParamsWriter` wrote, into a new instance of ``cls``."""

    def __init__(self, cls: type[P]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> P:
        """The stage saved at ``path``."""
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        if metadata.get("class") != expected:
            raise ValueError(f"{path} holds a {metadata.get('class')!r}, not a {expected!r}")
        instance: Any = self.cls()  # a Params subclass as well (the mixins' contract)
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        if metadata.get("kerasModel"):
            model = load_keras_model(self.sparkSession, os.path.join(path, metadata["kerasModel"]))
            instance._set(**{MODEL_PARAM: model})
        return cast(P, instance)


class KerasParamsWritable(MLWritable):
    """Mixin: ``write()``/``save()`` through :class:`KerasParamsWriter`."""

    def write(self) -> MLWriter:
        """An :class:`MLWriter` for this stage."""
        assert isinstance(self, Params)
        return KerasParamsWriter(self)


class KerasParamsReadable(MLReadable[P]):
    """Mixin: ``read()``/``load()`` through :class:`KerasParamsReader`."""

    @classmethod
    def read(cls) -> KerasParamsReader[P]:
        """An :class:`MLReader` for this class."""
        return KerasParamsReader(cast(type[P], cls))
