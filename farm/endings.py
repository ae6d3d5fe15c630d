"""The side effects of a job's one terminal transition, for every path that ends a job.

``jobs.finish_job`` is the transition (status, settlement), inside the caller's transaction.
After that transaction commits, the caller calls ``job_ended`` exactly when ``finish_job`` (or
a function that calls it) reported that it ended the job: the worker's steps, the API's cancel
and cache hits, the scheduler's give-ups. So the job counters and the webhook fire for every
ending, not only for the worker's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from farm import jobs, metrics
from farm.keys import Conn


def record_metrics(job: dict[str, Any]) -> None:
    """Count one ended job: completed (and its credits), or failed by kind; its duration."""
    quality = job["quality"]
    if job["status"] == "completed":
        metrics.JOBS_COMPLETED.labels(quality=quality).inc()
        metrics.CREDITS_SETTLED.labels(quality=quality).inc(float(job["credits_cost"] or 0))
    else:
        metrics.JOBS_FAILED.labels(quality=quality, kind=job["error_kind"] or "unknown").inc()
    if job["completed_at"] is not None:
        age = (job["completed_at"] - job["created_at"]).total_seconds()
        metrics.JOB_DURATION.labels(quality=quality).observe(age)


def job_ended(conn: Conn, job_id: str, notify: Callable[[str], None]) -> dict[str, Any]:
    """Metrics, then ``notify(job_id)`` (publish the webhook's first try); returns the job."""
    job = jobs.get_job(conn, job_id)
    record_metrics(job)
    notify(job_id)
    return job
