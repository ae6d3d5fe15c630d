"""The worker's liveness heartbeat (workers/liveness.py) against real Celery workers on Redis."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from farm.config import Settings
from tests.conftest import ROOT, Process
from workers import liveness


def check(path: Path, max_age: float) -> subprocess.CompletedProcess[str]:
    """The probe, exactly as the chart execs it (plus --file)."""
    return subprocess.run(
        [sys.executable, "-m", "workers.liveness", "--max-age", str(max_age), "--file", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_check_fails_without_a_heartbeat_and_on_a_stale_one(tmp_path: Path) -> None:
    beat = tmp_path / "alive"
    missing = check(beat, 60)
    assert missing.returncode == 1 and "no consumer heartbeat" in missing.stderr
    liveness.touch(beat)
    assert check(beat, 60).returncode == 0
    beat.write_text(f"{time.time() - 300}\n")
    stale = check(beat, 60)
    assert stale.returncode == 1 and "old" in stale.stderr
    beat.write_text("not a time\n")
    assert check(beat, 60).returncode == 1


@pytest.fixture()
def blocking_app(settings: Settings, tmp_path: Path) -> Iterator[tuple[Celery, Path, Any]]:
    """A real Celery app on the suite's Redis, with the heartbeat step beating every 0.2 s."""
    beat = tmp_path / "alive"

    class FastHeartbeat(liveness.ConsumerHeartbeat):
        interval = 0.2
        file = beat

    app = Celery("liveness-test", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=f"liveness-{tmp_path.name}",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.steps["consumer"].add(FastHeartbeat)
    release = threading.Event()

    @app.task(name="liveness.block")
    def block() -> None:
        release.wait(60)

    yield app, beat, release
    release.set()


def test_a_wedged_consumer_fails_the_probe(blocking_app: tuple[Celery, Path, Any]) -> None:
    app, beat, release = blocking_app
    # Given a worker whose consumer loop runs tasks inline (solo pool), so a task that never
    # returns wedges the loop while the process and its other threads stay up
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        wait_until(lambda: check(beat, 2).returncode == 0, 30, "the first heartbeat")
        first = liveness.age_seconds(beat)
        time.sleep(1)
        assert (liveness.age_seconds(beat) or 99) < (first or 0) + 1  # it keeps beating
        # When the consumer is stuck in a task
        app.send_task("liveness.block")
        wait_until(lambda: check(beat, 2).returncode == 1, 30, "the heartbeat to go stale")
        # Then the probe fails while the worker thread itself is still alive, and recovers
        # once the loop turns again
        assert check(beat, 2).stderr.startswith("consumer heartbeat is")
        release.set()
        wait_until(lambda: check(beat, 2).returncode == 0, 30, "the heartbeat to resume")


def test_the_farm_worker_beats_from_its_consumer(
    settings: Settings, farm_env: dict[str, str], tmp_path: Path
) -> None:
    # Given `farm worker` as the chart runs it, told where to beat
    beat = tmp_path / "alive"
    env = {**farm_env, liveness.FILE_ENV: str(beat)}
    worker = Process(
        ["worker", "--queues", "webhooks", "--concurrency", "1"], env, tmp_path / "worker.log"
    ).start()
    try:
        # Then its consumer writes the heartbeat and the probe passes
        wait_until(lambda: check(beat, 30).returncode == 0, 90, "the worker's first heartbeat")
        # And when the worker is gone the heartbeat goes stale and the probe fails
        worker.kill()
        time.sleep(2)
        assert check(beat, 1).returncode == 1
    finally:
        worker.stop()
