"""Worker liveness: a heartbeat file the Celery consumer refreshes from its own event loop.

The metrics server is a thread of its own and stays green while the consumer is wedged, so the
Kubernetes probe checks this file instead: ``python -m workers.liveness --max-age 120`` exits 1
when the consumer has not touched it for that long (or never has).

``ConsumerHeartbeat`` is a consumer bootstep: its timer lives on the consumer's event loop (the
hub, with prefork workers), so the file goes stale exactly when that loop stops turning. Render
tasks run in prefork children and never block it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from celery import bootsteps

# The probe's side of the contract; both ends read the same variable (set only by tests).
FILE_ENV = "FARM_WORKER_LIVENESS_FILE"
DEFAULT_FILE = "/tmp/farm-worker.alive"
INTERVAL_SECONDS = 10.0


def heartbeat_file() -> Path:
    return Path(os.environ.get(FILE_ENV) or DEFAULT_FILE)


def touch(path: Path) -> None:
    """Write the current time atomically (a reader never sees a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{time.time():.3f}\n")
    os.replace(tmp, path)


def age_seconds(path: Path, now: float | None = None) -> float | None:
    """Seconds since the consumer last beat; None when it never has."""
    try:
        beat = float(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return (time.time() if now is None else now) - beat


class ConsumerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Touch the heartbeat file every ``interval`` seconds from the consumer's timer."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}
    interval = INTERVAL_SECONDS
    file: Path | None = None  # None: $FARM_WORKER_LIVENESS_FILE or DEFAULT_FILE

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path = self.file or heartbeat_file()
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        self.beat()
        self.tref = parent.timer.call_repeatedly(self.interval, self.beat)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)

    def beat(self) -> None:
        with contextlib.suppress(OSError):  # a full or missing /tmp: the probe will say so
            touch(self.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="exit 0 if the worker's consumer is alive")
    parser.add_argument("--max-age", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--file", type=Path, default=None, help=f"default ${FILE_ENV} or {DEFAULT_FILE}"
    )
    args = parser.parse_args(argv)
    path = args.file or heartbeat_file()
    age = age_seconds(path)
    if age is None:
        print(f"no consumer heartbeat in {path} yet", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"consumer heartbeat is {age:.0f}s old (max {args.max_age:.0f}s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
