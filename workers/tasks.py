"""Celery task registrations, and nothing else: each names a step and hands it to the lifecycle.

Tasks take ids; the step's row in PostgreSQL says what is left to do (workers/lifecycle.py).
"""

from __future__ import annotations

from workers import lifecycle
from workers.celery_app import app
from workers.lifecycle import FarmTask
from workers.routing import TASKS
from workers.steps import helpers, webhook
from workers.steps.plan import plan
from workers.steps.render import render
from workers.steps.stitch import stitch


@app.task(base=FarmTask, bind=True, name=TASKS["plan"])
def plan_job(self: FarmTask, job_id: str, idx: int = 0) -> None:
    """Plan a job's chunks (workers/steps/plan.py), or help its plan draw (idx > 0:
    workers/steps/helpers.py)."""
    lifecycle.run_step(self.rt, "plan", job_id, idx, plan if idx == 0 else helpers.help_plan)


@app.task(base=FarmTask, bind=True, name=TASKS["chunk"])
def render_chunk(self: FarmTask, job_id: str, idx: int) -> None:
    """Render one chunk (workers/steps/render.py)."""
    lifecycle.run_step(self.rt, "chunk", job_id, idx, render)


@app.task(base=FarmTask, bind=True, name=TASKS["stitch"])
def stitch_job(self: FarmTask, job_id: str) -> None:
    """Join the chunks and complete the job (workers/steps/stitch.py)."""
    lifecycle.run_step(self.rt, "stitch", job_id, 0, stitch)


@app.task(base=FarmTask, bind=True, name=TASKS["webhook"])
def deliver_webhook(self: FarmTask, job_id: str, attempt: int) -> None:
    """Deliver a job's terminal event (workers/steps/webhook.py)."""
    webhook.deliver(self.rt, job_id, attempt)
