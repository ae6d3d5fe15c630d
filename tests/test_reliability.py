"""Crashes anywhere never lose or double a job: real processes, real signals, real Redis."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis

from api.app import get_services
from tests.conftest import Key, Process, alive, submit, wait_for
from tests.scenes import SLOW_RENDER as SLOW
from tests.scenes import uncached

QUICK = """
from manim import *

class Quick(Scene):
    def construct(self):
        self.play(Create(Circle()), run_time=0.4)
        self.play(FadeOut(Circle()), run_time=0.4)
"""


def _steps(pool: Any, job_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return list(
            conn.execute(
                "SELECT kind, idx, status, attempt FROM steps WHERE job_id = %s ORDER BY kind, idx",
                (job_id,),
            ).fetchall()
        )


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_sigkilled_mid_chunk_still_completes(
    client: Any, api_key: Key, worker: Process, pool: Any, settings: Any
) -> None:
    job_id = submit(client, api_key, uncached(SLOW.format(sleep=4)), "Slow", fps=5)
    _wait_until(
        lambda: (
            any(s["kind"] == "chunk" and s["status"] == "running" for s in _steps(pool, job_id))
            and worker.render_children()
        ),
        60,
        "a chunk to start rendering",
    )
    # When the whole worker (main process, pool children, sandboxes) is SIGKILLed
    jails = [pid for pid, _ in worker.jails()]
    killed_at = time.monotonic()
    worker.kill(signal.SIGKILL)
    _wait_until(lambda: not any(alive(p) for p in jails), 10, "its sandboxes to die with it")
    worker.start()
    # Then the lease expires, the reaper re-queues the chunk, and the job completes
    job = wait_for(client, api_key, job_id, timeout=90)
    took = time.monotonic() - killed_at
    assert job["status"] == "completed", job["error"]
    # Bound: lease + reaper interval + worker start + the re-render (4 s sleep, two chunks).
    assert took < settings.lease_seconds + 45
    attempts = {(s["kind"], s["idx"]): s["attempt"] for s in _steps(pool, job_id)}
    assert attempts[("plan", 0)] == 1
    assert max(attempts.values()) == 2 and all(a <= 2 for a in attempts.values())


def test_duplicate_messages_render_once(
    app: Any, client: Any, api_key: Key, worker: Process, pool: Any
) -> None:
    publisher = get_services(app).publisher  # the API's own, as in production
    job_id = submit(client, api_key, uncached(SLOW.format(sleep=3)), "Slow", fps=5)
    publisher.step(job_id, "plan", 0, "low")  # a redelivered plan message
    _wait_until(lambda: len(_steps(pool, job_id)) >= 3, 60, "the plan")
    # Redelivered chunk messages while the chunks render (as after a visibility timeout)
    for _ in range(3):
        publisher.step(job_id, "chunk", 0, "low")
        publisher.step(job_id, "chunk", 1, "low")
    peak = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        peak = max(peak, len(worker.render_children()))
        job = client.get(f"/api/v2/render/{job_id}", headers=api_key.headers).get_json()
        if job["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "completed", job["error"]
    assert peak <= 2  # two chunks, each rendered by one process at a time
    assert all(s["attempt"] == 1 and s["status"] == "done" for s in _steps(pool, job_id))
    publisher.step(job_id, "stitch", 0, "low")  # a late duplicate after completion
    time.sleep(1)
    again = client.get(f"/api/v2/render/{job_id}", headers=api_key.headers).get_json()
    assert again["completedAt"] == job["completedAt"] and again["result"]["video"]


def test_flushed_redis_loses_no_job(
    client: Any, api_key: Key, worker: Process, settings: Any
) -> None:
    job_ids = [submit(client, api_key, uncached(QUICK), "Quick", fps=f) for f in (4, 5, 6)]
    # When Redis loses every queued message
    redis.Redis.from_url(settings.redis_url).flushdb()
    # Then every job still ends, republished by the reaper after requeue_after_seconds
    for job_id in job_ids:
        job = wait_for(client, api_key, job_id, timeout=settings.requeue_after_seconds + 90)
        assert job["status"] == "completed", job["error"]


def test_stitch_worker_dies_holding_the_message(
    client: Any,
    api_key: Key,
    worker: Process,
    farm_env: dict[str, str],
    artifacts: Any,
    pool: Any,
    settings: Any,
) -> None:
    worker.stop()
    port = settings.worker_metrics_port
    renderer = Process(
        ["worker", "--queues", "render.low", "--concurrency", "2"],
        {**farm_env, "FARM_WORKER_METRICS_PORT": str(port + 5)},
        artifacts / "reliability-render.log",
    ).start()
    stitcher = Process(
        ["worker", "--queues", "stitch", "--concurrency", "1"],
        {**farm_env, "FARM_WORKER_METRICS_PORT": str(port + 6)},
        artifacts / "reliability-stitch.log",
    ).start()
    try:
        time.sleep(4)
        # A frozen stitch worker: Redis still hands its blocked fetch the stitch message.
        assert stitcher.proc is not None
        os.killpg(stitcher.proc.pid, signal.SIGSTOP)
        job_id = submit(client, api_key, uncached(QUICK), "Quick", fps=7)
        _wait_until(
            lambda: any(s["kind"] == "stitch" for s in _steps(pool, job_id)),
            60,
            "the chunks to finish",
        )
        time.sleep(1)
        stitcher.kill(signal.SIGKILL)  # it dies with the message
        renderer.stop()
        worker.start()
        job = wait_for(client, api_key, job_id, timeout=settings.requeue_after_seconds + 60)
        assert job["status"] == "completed", job["error"]
    finally:
        renderer.stop()
        stitcher.kill()
        if worker.proc is None or worker.proc.poll() is not None:
            worker.start()
