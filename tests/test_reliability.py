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


def test_a_lost_attempt_leaves_no_trace_and_is_not_billed(pool: Any, make_key: Any) -> None:
    """A zombie chunk attempt (its worker stalled past its lease) records nothing, and the
    job is billed for the time its owning attempts ran, not for the stall."""
    from farm import jobs
    from farm.planner import ChunkPlan

    key = make_key(credits=100)
    with pool.connection() as conn:
        request = jobs.JobRequest(code=uncached(QUICK), class_name="Quick", quality="low")
        job_id = jobs.submit_job(conn, key.id, request, manim_version="test").job_id
        plan = jobs.claim_step(conn, job_id, "plan", 0, lease_seconds=30)
        assert plan is not None
        assert jobs.record_plan(conn, plan, [ChunkPlan(0, 2, 0.8)], [12], "plan.log") == [0]
        zombie = jobs.claim_step(conn, job_id, "chunk", 0, lease_seconds=30)
        assert zombie is not None
        # The worker stalls; its lease runs out; the reaper gives the chunk to attempt 2
        conn.execute(
            "UPDATE steps SET lease_until = now() - interval '1 second' WHERE job_id = %s"
            " AND kind = 'chunk'",
            (job_id,),
        )
        reaped = jobs.reap(conn, max_attempts=3, requeue_after_seconds=30)
        assert [(r.job_id, r.kind) for r in reaped.requeue] == [(job_id, "chunk")]
        owner = jobs.claim_step(conn, job_id, "chunk", 0, lease_seconds=30)
        assert owner is not None and owner.attempt == 2
        # The zombie wakes up and tries to record: nothing of it is kept
        assert jobs.record_chunk(conn, zombie, "z.mp4", None, 12, "z.log") is None
        assert jobs.record_chunk(conn, owner, "o.mp4", None, 12, "o.log") is True
        row = conn.execute(
            "SELECT output_key, log_key FROM steps WHERE job_id = %s AND kind = 'chunk'",
            (job_id,),
        ).fetchone()
        assert (row["output_key"], row["log_key"]) == ("o.mp4", "o.log")
        # Time on the job's clock: plan 0-2 s, the lost attempt 2-42 s, the owner 42-47 s;
        # the job ends at 48 s
        conn.execute(
            "UPDATE jobs SET started_at = now() - interval '48 seconds' WHERE id = %s", (job_id,)
        )
        for kind, start, end in (("plan", 48, 46), ("chunk", 6, 1)):
            conn.execute(
                "UPDATE steps SET started_at = now() - make_interval(secs => %s),"
                " finished_at = now() - make_interval(secs => %s) WHERE job_id = %s AND kind = %s",
                (start, end, job_id, kind),
            )
        assert jobs.finish_job(conn, job_id, "completed")
        job = jobs.get_job(conn, job_id)
    # Billed: plan 2 s + owning chunk 5 s, not the 48 s the job took
    assert job["duration_ms"] >= 48_000
    assert 6_900 <= job["billed_ms"] <= 7_500
    assert job["credits_cost"] == jobs.job_cost("low", job["billed_ms"])


def test_every_terminal_path_counts_the_job(client: Any, make_key: Any, pool: Any) -> None:
    """API cancels and cache hits reach the job-end metrics too (farm.endings.job_ended)."""
    from prometheus_client import REGISTRY

    from farm import jobs

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"quality": "low", **labels}) or 0.0

    key = make_key()
    code = uncached(QUICK)
    canceled_before = count("farm_jobs_failed_total", kind="canceled")
    first = submit(client, key, code, "Quick")
    response = client.delete(f"/api/v2/render/{first}", headers=key.headers)
    assert response.get_json()["error"] == "canceled"
    assert count("farm_jobs_failed_total", kind="canceled") == canceled_before + 1
    # A completed identical job of the same owner: the next submit is a cache hit
    second = submit(client, key, code, "Quick")
    with pool.connection() as conn:
        conn.execute(
            "UPDATE jobs SET video_key = 'v', thumbnail_key = 't' WHERE id = %s", (second,)
        )
        assert jobs.finish_job(conn, second, "completed")
    completed_before = count("farm_jobs_completed_total")
    third = client.post(
        "/api/v2/render",
        headers=key.headers,
        json={"code": code, "className": "Quick", "quality": "low"},
    ).get_json()
    assert third["status"] == "completed"
    assert count("farm_jobs_completed_total") == completed_before + 1


def test_a_long_step_keeps_its_lease_and_a_platform_fault_releases_it(
    settings: Any, make_key: Any, pool: Any
) -> None:
    """The lifecycle heartbeats every step (the stitch included) while its body runs, so the
    reaper never hands a slow step to a second worker; an exception is classified and the
    step given back."""
    from farm import jobs
    from farm.services import build_services
    from tests.support import RecordingPublisher
    from workers import lifecycle, media, outcomes
    from workers.jail.pool import JailPool
    from workers.runtime import Runtime

    key = make_key()
    with pool.connection() as conn:
        request = jobs.JobRequest(code=uncached(QUICK), class_name="Quick", quality="low")
        job_id = jobs.submit_job(conn, key.id, request, manim_version="test").job_id
        # Sent already, as far as the session's dispatcher knows: this test is its worker.
        conn.execute("UPDATE steps SET published_at = now() WHERE job_id = %s", (job_id,))
    publisher = RecordingPublisher()
    rt = Runtime(
        build_services(settings, publisher, pool_size=2),
        JailPool(settings),
        JailPool(settings, media.stitch_limits(settings), "media"),
    )
    reaped: list[Any] = []
    ran: list[bool] = []

    def slow_body(step: lifecycle.Step) -> outcomes.Outcome:
        ran.append(True)
        # Twice the lease, reaping all along: the heartbeat keeps the step this attempt's
        deadline = time.monotonic() + 2 * settings.lease_seconds
        while time.monotonic() < deadline:
            with pool.connection() as conn:
                reaped.extend(jobs.reap(conn, max_attempts=3, requeue_after_seconds=300).requeue)
            time.sleep(0.5)
        assert step.keep_going()
        raise OSError("the object store went away")

    try:
        lifecycle.run_step(rt, "plan", job_id, 0, slow_body)
    finally:
        rt.services.close()
    assert ran, "another worker claimed the plan first"
    assert not [r for r in reaped if r.job_id == job_id]
    steps = _steps(pool, job_id)
    assert (steps[0]["status"], steps[0]["attempt"]) == ("pending", 1)  # released for a retry
    assert ("step", job_id, "plan", 0, "low") in publisher.sent
    with pool.connection() as conn:
        job = jobs.get_job(conn, job_id)
    assert job["status"] == "running" and job["error"] is None


def test_a_helper_pass_whose_worker_died_is_dropped_never_retried_nor_fatal(
    pool: Any, make_key: Any
) -> None:
    """A plan's helper pass (plan step 1) only adds movies to the cache: when its lease runs out
    the reaper drops it; the job goes on, and the plan, still running, owns it."""
    from farm import jobs

    key = make_key()
    with pool.connection() as conn:
        request = jobs.JobRequest(code=uncached(QUICK), class_name="Quick", quality="low")
        job_id = jobs.submit_job(conn, key.id, request, manim_version="test").job_id
        plan = jobs.claim_step(conn, job_id, "plan", 0, lease_seconds=30)
        assert plan is not None
        # Given a plan that added one helper pass, and a worker that took the helper
        assert jobs.add_plan_helpers(conn, plan, 1) == 1
        assert jobs.add_plan_helpers(conn, plan, 1) == 0  # once per job
        helper = jobs.claim_step(conn, job_id, "plan", 1, lease_seconds=30)
        assert helper is not None and jobs.is_plan_helper(helper)
        assert jobs.plan_helper_running(conn, job_id, 1)
        # When that worker dies and the helper's lease runs out (max_attempts=1: a plan step
        # would fail its job now)
        conn.execute(
            "UPDATE steps SET lease_until = now() - interval '1 second' WHERE job_id = %s"
            " AND kind = 'plan' AND idx = 1",
            (job_id,),
        )
        reaped = jobs.reap(conn, max_attempts=1, requeue_after_seconds=30)
        # Then it is not published again, the job still runs, and the plan waits for it no more
        assert reaped.requeue == [] and reaped.ended == []
        assert jobs.get_job(conn, job_id)["status"] == "running"
        assert not jobs.plan_helper_running(conn, job_id, 1)
        status = conn.execute(
            "SELECT status FROM steps WHERE job_id = %s AND kind = 'plan' AND idx = 1", (job_id,)
        ).fetchone()
        assert status["status"] == "done"
        # And the helper's late report changes nothing
        assert not jobs.finish_plan_helper(conn, helper)
        assert jobs.heartbeat(conn, plan, 30)
