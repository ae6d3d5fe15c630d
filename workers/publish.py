"""Publishing work to Celery; called only after the transaction that recorded it has committed."""

from __future__ import annotations

from celery import Celery

from workers.routing import TASKS, queue_for


class Publisher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def step(
        self, job_id: str, kind: str, idx: int, quality: str, priority: int | None = None
    ) -> None:
        """Send ``(job_id, idx)``: the task re-reads everything else from PostgreSQL.

        ``priority`` (Redis: 0 is served first, then 3, 6, 9) lets the fair dispatcher put a
        waiting tenant's step ahead of a flood's already queued ones."""
        # A job's plan and stitch are step 0; a plan's helper passes are plan steps 1..n.
        args = [job_id] if kind == "stitch" or (kind == "plan" and idx == 0) else [job_id, idx]
        self.app.send_task(
            TASKS[kind], args=args, queue=queue_for(kind, quality), priority=priority
        )

    def webhook(self, job_id: str, attempt: int, countdown: float = 0) -> None:
        self.app.send_task(
            TASKS["webhook"],
            args=[job_id, attempt],
            queue=queue_for("webhook"),
            countdown=countdown,
        )
