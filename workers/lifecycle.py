"""The life of one step: claim -> log context -> heartbeat -> body -> classify -> done/release/fail.

A step body (workers/steps/) is a plain function of a ``Step``; it returns an outcome or raises.
Everything around it is here, once: the compare-and-set claim, the job's log context, a
heartbeat thread that keeps the lease and says when to stop, the classification of every
exception (workers/outcomes.py), and the one place each outcome is acted on, including the
job's end (``job_ended``: metrics and webhook).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Task

from farm import endings, jobs, metrics, objects
from farm.jobs import Claim
from farm.logs import log_context
from workers import outcomes
from workers.outcomes import Outcome, PlatformFault, SceneFault
from workers.routing import queue_for
from workers.runtime import Runtime, get_runtime

log = logging.getLogger("farm.worker")


class FarmTask(Task):  # type: ignore[misc]
    """Base task: late acks (a message leaves Redis only once its step is settled)."""

    acks_late = True

    @property
    def rt(self) -> Runtime:
        return get_runtime()


class Heartbeat:
    """Renews the step's lease every ``heartbeat_seconds`` in a thread, until stopped; after a
    failed renewal (job ended, lease taken over) ``keep_going()`` answers False for good."""

    def __init__(self, rt: Runtime, claim: Claim) -> None:
        self.rt, self.claim = rt, claim
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        settings = self.rt.settings
        while not self._stop.wait(settings.heartbeat_seconds):
            try:
                with self.rt.pool.connection() as conn:
                    alive = jobs.heartbeat(conn, self.claim, settings.lease_seconds)
            except Exception:  # the database away for a moment: the lease has slack
                log.warning("heartbeat failed", exc_info=True)
                continue
            if not alive:
                self._lost.set()
                return

    def keep_going(self) -> bool:
        return not self._lost.is_set()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Step:
    """What a step body gets: the runtime, its claim, and whether to keep going."""

    rt: Runtime
    claim: Claim
    beat: Heartbeat

    def keep_going(self) -> bool:
        return self.beat.keep_going()

    @contextmanager
    def conn(self) -> Iterator[Any]:
        with self.rt.pool.connection() as conn:
            yield conn


Body = Callable[[Step], Outcome]


def run_step(rt: Runtime, kind: str, job_id: str, idx: int, body: Body) -> None:
    """Claim the step, run its body under a heartbeat, and settle the outcome."""
    with rt.pool.connection() as conn:
        claim = jobs.claim_step(conn, job_id, kind, idx, rt.settings.lease_seconds)
    if claim is None:
        return  # done, taken, or its job ended: a duplicate or late message
    fields: dict[str, Any] = {"job_id": job_id, "step": kind, "attempt": claim.attempt}
    if kind == "chunk":
        fields["chunk"] = idx
    with log_context(**fields):
        with Heartbeat(rt, claim) as beat:
            try:
                outcome = body(Step(rt, claim, beat))
            except Exception as exc:
                log.exception("%s step raised", kind)
                outcome = outcomes.of_exception(exc)
        settle(rt, claim, outcome)


def settle(rt: Runtime, claim: Claim, outcome: Outcome) -> None:
    """Act on a step's outcome: fail the job, give the step back, or nothing."""
    if jobs.is_plan_helper(claim) and isinstance(outcome, SceneFault):
        # A helper's failure is never its job's: the plan meets the same scene and speaks.
        outcome = PlatformFault(outcome.error, outcome.log_key)
    if claim.kind == "chunk" and not isinstance(outcome, outcomes.Done):
        kind = outcome.kind if isinstance(outcome, SceneFault) else type(outcome).__name__.lower()
        metrics.CHUNKS_FAILED.labels(queue=queue_for("chunk", claim.quality), kind=kind).inc()
    if isinstance(outcome, SceneFault):
        log.warning(
            "step %s %s failed (%s): %s", claim.kind, claim.idx, outcome.kind, outcome.error
        )
        with rt.pool.connection() as conn:
            ended = jobs.fail_step(conn, claim, outcome.error, outcome.kind)
            if ended and outcome.log_key:
                jobs.set_log_key(conn, claim.job_id, outcome.log_key)
        if ended:
            job_ended(rt, claim.job_id)
    elif isinstance(outcome, PlatformFault):
        log.warning(
            "step %s %s attempt %s: %s", claim.kind, claim.idx, claim.attempt, outcome.error
        )
        metrics.TASK_RETRIES.labels(task=claim.kind).inc()
        with rt.pool.connection() as conn:
            released = jobs.release_step(conn, claim, outcome.error, rt.settings.max_attempts)
            if released == "failed" and outcome.log_key:
                jobs.set_log_key(conn, claim.job_id, outcome.log_key)
        if released == "requeued":
            rt.publisher.step(claim.job_id, claim.kind, claim.idx, claim.quality)
        elif released == "failed":
            job_ended(rt, claim.job_id)
    elif isinstance(outcome, outcomes.Stopped):
        log.info("step stopped: %s", outcome.reason)


def job_ended(rt: Runtime, job_id: str) -> None:
    """Metrics and the webhook of a job's one terminal transition (after it committed); a
    failed job's chunk objects are deleted (a chunk still in flight deletes its own)."""
    with rt.pool.connection() as conn:
        job = endings.job_ended(conn, job_id, lambda j: rt.publisher.webhook(j, 1))
    if job["status"] == "failed":
        rt.storage.delete_prefix(objects.chunks_prefix(job_id))
