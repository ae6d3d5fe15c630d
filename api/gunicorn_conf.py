"""gunicorn hooks: drop a dead worker's metric files so gauges don't keep its values."""

from typing import Any

from farm import metrics


def child_exit(server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid)
