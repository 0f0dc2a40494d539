"""What a failed run says about its workers: who had not finished, and how far each got."""

from __future__ import annotations

import time

from distkeras_async.server.running import RunningServer


def unfinished_workers(server: RunningServer) -> str:
    """Which workers had not said goodbye when a run failed, with how far each got."""
    stats = server.stats()
    now = time.time()
    lines = []
    for worker, ws in sorted(stats.workers.items()):
        if ws.finished:
            continue
        step = ws.last_metrics.get("steps")
        progress = f"last reported step {int(step)}" if step is not None else "no step reported"
        heard = f"{now - ws.last_seen:.1f} s ago" if ws.last_seen else "never"
        lines.append(
            f"  worker {worker} (attempt {ws.attempt}): {ws.commits} commit(s) applied, "
            f"{progress}, last heard from {heard}"
        )
    silent = [w for w in range(server.num_workers) if w not in stats.workers]
    if silent:
        lines.append(f"  never connected: worker(s) {silent}")
    if not lines:
        return "Every worker had said goodbye to the parameter server."
    return "Workers that had not finished when the job failed:\n" + "\n".join(lines)
