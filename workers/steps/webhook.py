"""The webhook task's body: claim one try, send it, record it, schedule the next if it failed.

A try is claimed by inserting its ``webhook_deliveries`` row and committing before anything is
sent, so a redelivered message finds the row and sends nothing. Retries are new messages with a
countdown on the ``webhooks`` queue, never sleeps in a worker slot.
"""

from __future__ import annotations

import logging

from farm import jobs, metrics, webhooks
from farm.errors import NotFound
from farm.logs import log_context
from workers.runtime import Runtime

log = logging.getLogger("farm.webhooks")


def deliver(rt: Runtime, job_id: str, attempt: int) -> None:
    settings = rt.settings
    series, n = webhooks.split_attempt(attempt)
    with log_context(job_id=job_id, webhook_attempt=attempt):
        if n > len(settings.webhook_retry_delays) + 1:
            log.warning("webhook attempt %s is past the end of its series; dropped", attempt)
            return
        with rt.pool.connection() as conn:
            try:
                job = jobs.get_job(conn, job_id)
            except NotFound:
                return
            if job["status"] not in jobs.TERMINAL:
                # Published by a path that did not end the job after all; the real end publishes.
                log.info("job not terminal yet (%s); no webhook", job["status"])
                return
            target = webhooks.target_for(conn, job)
            if target is None:
                return
            if not webhooks.claim_attempt(conn, job_id, target.event, target.url, attempt):
                log.info("webhook attempt %s already made; duplicate message ignored", attempt)
                return
        # The claim is committed: from here on this try happens at most once.
        try:
            body = webhooks.payload(job, rt.storage.url_for)
            outcome = webhooks.send(
                target.url,
                body,
                webhooks.headers(target.event, target.secret, body),
                allowlist=settings.webhook_allowlist,
                timeout=settings.webhook_timeout_seconds,
                ca_bundle=settings.webhook_ca_bundle,
            )
        except Exception as exc:  # never leave the row saying "sending"
            log.exception("webhook delivery crashed")
            outcome = webhooks.Outcome(
                0, 0, f"delivery error: {exc.__class__.__name__}: {exc}", "connect_error"
            )
        with rt.pool.connection() as conn:
            webhooks.record_attempt(conn, job_id, target.event, attempt, outcome)
            countdown = (
                webhooks.retry_countdown(
                    conn, job_id, target.event, attempt, settings.webhook_retry_delays
                )
                if outcome.retryable
                else None
            )
        metrics.WEBHOOK_ATTEMPTS.labels(outcome=outcome.kind).inc()
        log.info(
            "webhook for event %s, series %s try %s: %s (%s ms)",
            target.event,
            series,
            n,
            outcome.error or f"HTTP {outcome.status_code}",
            outcome.duration_ms,
        )
        if countdown is not None:
            rt.publisher.webhook(job_id, attempt + 1, countdown)
