"""Checkpoints of the center variable: atomic on disk, no pickle, and checked on resume.

A checkpoint is a ``.npz`` file holding the flat float32 center, the server version, the
layout, the algorithm's name and hyperparameters (as JSON text), and the server rule's state
(its transforms' arrays, ``Algorithm.server_state`` flattened), which a resumed server
continues from. It is written to a
temporary file in the same folder, flushed and fsync'ed, then renamed over the old one (and
the folder fsync'ed), so a crash at any moment leaves either the previous checkpoint or the
new one, never a torn file. It is read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distkeras_async import checks
from distkeras_async.errors import CheckpointError
from distkeras_async.layout import FLAT_DTYPE, Layout

logger = logging.getLogger(__name__)

# Periodic checkpoints that fail in a row before the run fails: one failure may be a passing
# hiccup (a full disk being cleaned); three mean the run's progress is not being saved.
MAX_CHECKPOINT_FAILURES = 3


def check_writable(path: str | os.PathLike[str]) -> None:
    """Prove that checkpoints can be written to ``path``: a probe file beside it, removed.

    Run before any job, so an unwritable path (a read-only filesystem, a folder that is a
    file) fails in a second rather than after the whole run.

    Raises:
        CheckpointError: naming the path and the operating system's error.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.probe.", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(b"distkeras-async checkpoint probe")
                stream.flush()
                os.fsync(stream.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoints to {path}: {exc}") from exc


@dataclass(frozen=True)
class Checkpoint:
    """The center at some version, with what it belongs to."""

    center: np.ndarray
    version: int
    layout: Layout
    algorithm: str
    hyperparameters: dict[str, Any]
    rule_state: tuple[np.ndarray, ...] = ()


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(
        {
            "version": checkpoint.version,
            "layout": checkpoint.layout.to_wire(),
            "algorithm": checkpoint.algorithm,
            "hyperparameters": checkpoint.hyperparameters,
            "rule_state": len(checkpoint.rule_state),
        }
    )
    arrays: dict[str, Any] = {"center": checkpoint.center, "meta": np.array(meta)}
    arrays.update({f"rule_state_{i}": array for i, array in enumerate(checkpoint.rule_state)})
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # make the rename itself durable
    finally:
        os.close(folder)


def load_checkpoint(path: str | os.PathLike[str], layout: Layout | None = None) -> Checkpoint:
    """Read a checkpoint; with ``layout``, check that it belongs to the same model.

    Raises:
        CheckpointError: if the file is missing or invalid, or the layout differs.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            center = np.array(data["center"], dtype=FLAT_DTYPE)
            meta = json.loads(str(data["meta"]))
            # Checkpoints written before rules kept state have none.
            rule_state = tuple(
                np.array(data[f"rule_state_{i}"]) for i in range(int(meta.get("rule_state", 0)))
            )
        checkpoint = Checkpoint(
            center=center,
            version=int(meta["version"]),
            layout=Layout.from_wire(meta["layout"]),
            algorithm=str(meta["algorithm"]),
            hyperparameters=dict(meta["hyperparameters"]),
            rule_state=rule_state,
        )
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    # A truncated file ends early (EOFError), a damaged one fails zip's checks (BadZipFile,
    # a bad CRC among them): each names the path and what numpy or zipfile found wrong.
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        what = str(exc) or type(exc).__name__
        raise CheckpointError(f"{path} is not a valid checkpoint: {what}") from exc
    if checkpoint.center.shape != (checkpoint.layout.size,):
        raise CheckpointError(f"{path}: the center does not match its own layout")
    if layout is not None and checkpoint.layout != layout:
        raise CheckpointError(
            f"{path} holds a model with {checkpoint.layout.size} parameters in "
            f"{len(checkpoint.layout.specs)} tensors; this model has {layout.size} in "
            f"{len(layout.specs)}"
        )
    return checkpoint


# Settings of how updates travel, not of what the rule computes: a run may resume with others
# (and checkpoints written before they existed lack them).
TRANSPORT = frozenset({"commit_dtype", "pull_dtype"})


def check_resumable(
    checkpoint: Checkpoint, path: object, algorithm: str, hyperparameters: dict[str, Any]
) -> None:
    """Refuse to resume a run with another algorithm or other hyperparameters.

    A center trained by one rule is not a valid state of another (an elastic center is not
    an averaged one, a different window changes what a commit means), so resuming must not
    silently change them.

    Raises:
        CheckpointError: naming what differs and both values.
    """
    if checkpoint.algorithm != algorithm:
        raise CheckpointError(
            f"{path} was written by algorithm {checkpoint.algorithm!r}; this run uses "
            f"{algorithm!r}: resume with the algorithm that wrote it"
        )
    # Compare as the checkpoint stores them (JSON), so 5 and 5.0 are not told apart twice.
    ours = json.loads(json.dumps(hyperparameters))
    differ = sorted(
        key
        for key in set(ours) | set(checkpoint.hyperparameters)
        if ours.get(key) != checkpoint.hyperparameters.get(key) and key not in TRANSPORT
    )
    if differ:
        details = ", ".join(
            f"{key}: {checkpoint.hyperparameters.get(key)!r} in the checkpoint, "
            f"{ours.get(key)!r} now"
            for key in differ
        )
        raise CheckpointError(
            f"{path} was written with other hyperparameters of {algorithm!r} ({details}): "
            "resume with the same ones"
        )


class Checkpointer:
    """Writes the server's center every ``every`` updates and/or every ``interval`` seconds.

    Runs on the server's event loop: the center is copied there (a consistent version) and
    written by a worker thread, so a slow disk never stalls the loop; one write at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        layout: Layout,
        algorithm: str,
        hyperparameters: dict[str, Any],
        *,
        every: int | None = None,
        interval: float | None = None,
    ) -> None:
        checks.optional_positive_int(every, "checkpoint_every")
        checks.optional_positive_number(interval, "checkpoint_interval")
        self.path = Path(path)
        self.layout = layout
        self.algorithm = algorithm
        self.hyperparameters = hyperparameters
        self.every = every
        self.interval = interval
        self.written = 0
        self.written_version = -1
        self.error: BaseException | None = None
        self.failures = 0  # consecutive failed writes
        self._last_version = 0
        self._last_time = 0.0
        self._busy = False

    def checkpoint(
        self, center: np.ndarray, version: int, rule_state: tuple[np.ndarray, ...] = ()
    ) -> Checkpoint:
        """The checkpoint of a center copy at ``version`` (and of the rule's state then)."""
        return Checkpoint(
            center, version, self.layout, self.algorithm, self.hyperparameters, rule_state
        )

    def due(self, version: int, now: float) -> bool:
        """Whether a checkpoint is due (and none is being written)."""
        if self._busy or version == self.written_version:
            return False
        by_count = self.every is not None and version - self._last_version >= self.every
        by_time = self.interval is not None and now - self._last_time >= self.interval
        return by_count or by_time

    def start(self, version: int, now: float) -> None:
        """Record that a write of ``version`` begins (call on the loop)."""
        self._busy = True
        self._last_version, self._last_time = version, now

    def write(
        self, center: np.ndarray, version: int, rule_state: tuple[np.ndarray, ...] = ()
    ) -> None:
        """Write a center copy (and copies of the rule's state) now, in the calling thread.

        A failure is logged at once as a warning and counted (:attr:`failed_for_good` after
        several in a row).
        """
        try:
            save_checkpoint(self.path, self.checkpoint(center, version, rule_state))
            self.written += 1
            self.written_version = version
            self.failures = 0
        except OSError as exc:
            self.error = exc
            self.failures += 1
            logger.warning(
                "checkpoint of version %d to %s failed (%d in a row; the run fails after %d): %s",
                version,
                self.path,
                self.failures,
                MAX_CHECKPOINT_FAILURES,
                exc,
            )
        finally:
            self._busy = False

    @property
    def failed_for_good(self) -> str | None:
        """Why the run must fail, once :data:`MAX_CHECKPOINT_FAILURES` writes failed in a row."""
        if self.failures < MAX_CHECKPOINT_FAILURES:
            return None
        return (
            f"{self.failures} checkpoints in a row could not be written to {self.path}: "
            f"{self.error}; free space or fix the path, then resume from the last checkpoint"
        )
