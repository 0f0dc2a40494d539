"""A progress bar on the driver: updates, samples/s and the latest loss, read from the server."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from distkeras_async.server.running import RunningServer

# Refreshing twice a second keeps the bar lively and costs one stats snapshot per refresh.
REFRESH_SECONDS = 0.5


def attached_to_terminal() -> bool:
    """Whether a person is watching: stderr is a terminal, or we run in a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A tqdm bar fed by a background thread polling the parameter server's statistics."""

    def __init__(self, server: RunningServer, description: str) -> None:
        self.server = server
        self.description = description
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distkeras-progress", daemon=True)
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        from tqdm.auto import tqdm

        self._bar = tqdm(desc=self.description, unit=" updates", dynamic_ncols=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._refresh(time.monotonic())
        self._bar.close()

    @staticmethod
    def epoch_line(num_epoch: int) -> Any:
        """A function that prints one line per global epoch: its number and its logs."""
        from tqdm.auto import tqdm

        def write(epoch: int, logs: dict[str, float]) -> None:
            values = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            tqdm.write(f"Epoch {epoch + 1}/{num_epoch} - {values}")

        return write

    def _run(self) -> None:
        self._started = time.monotonic()
        while not self._stop.wait(REFRESH_SECONDS):
            self._refresh(time.monotonic())

    def _refresh(self, now: float) -> None:
        if not self.server.running:
            return
        stats = self.server.stats()
        self._bar.n = stats.version
        samples = sum(w.last_metrics.get("samples", 0.0) for w in stats.workers.values())
        losses = [w.last_loss for w in stats.workers.values() if w.last_loss is not None]
        elapsed = max(now - getattr(self, "_started", now), 1e-9)
        postfix = {"samples/s": f"{samples / elapsed:,.0f}"}
        if losses:
            postfix["loss"] = f"{sum(losses) / len(losses):.4f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()
