"""Copies of the center taken during a run, e.g. to plot accuracy against wall time."""

from __future__ import annotations

import threading
import time
from typing import Any

from distkeras_async.server.running import RunningServer


class CenterSnapshots:
    """Copies the center every ``interval`` seconds from a background thread."""

    def __init__(self, server: RunningServer, began: float, interval: float | None) -> None:
        self.server, self.began, self.interval = server, began, interval
        self.taken: list[tuple[float, list[Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distkeras-snapshots", daemon=True)

    def __enter__(self) -> CenterSnapshots:
        if self.interval:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            if self.server.running:
                self.taken.append((time.time() - self.began, self.server.center))
