"""``farm scheduler``: the one process that dispatches work fairly (``farm.dispatch``, its own
thread), reaps lost work and exports queue gauges.

Run exactly one (the Helm chart does); a second one is harmless (SKIP LOCKED, CAS claims) but
would export the queue gauges twice.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from farm import dispatch, endings, jobs, metrics, objects, webhooks
from farm.config import Settings
from farm.db import Pool
from farm.logs import log_context
from farm.presets import QUALITIES
from farm.services import Publisher as FarmPublisher
from farm.services import build_services
from farm.storage import Storage
from workers.celery_app import app, configure
from workers.publish import Publisher
from workers.registry import queue_consumers
from workers.routing import ALL_QUEUES

log = logging.getLogger("farm.scheduler")


def run_once(
    settings: Settings,
    pool: Pool,
    client: redis.Redis,
    publisher: FarmPublisher,
    storage: Storage | None = None,
) -> int:
    with pool.connection() as conn:
        reaped = jobs.reap(
            conn,
            max_attempts=settings.max_attempts,
            requeue_after_seconds=settings.requeue_after_seconds,
        )
        ages = jobs.oldest_queued_age(conn)
        # Webhook tries whose message was lost, and first tries for jobs the reaper failed.
        due = webhooks.due_deliveries(conn, settings.webhook_retry_delays)
    for job_id in reaped.ended:  # gave up (attempts spent): the end's metrics and webhook
        with pool.connection() as conn:
            endings.job_ended(conn, job_id, lambda j: publisher.webhook(j, 1))
        if storage is not None:  # a failed job keeps no chunk objects
            storage.delete_prefix(objects.chunks_prefix(job_id))
    for job_id, attempt in due:
        publisher.webhook(job_id, attempt)
    for item in reaped.requeue:
        publisher.step(item.job_id, item.kind, item.idx, item.quality)
        metrics.REAPER_REQUEUED.labels(kind=item.kind).inc()
        fields = {"job_id": item.job_id, **({"chunk": item.idx} if item.kind == "chunk" else {})}
        with log_context(**fields):
            log.info("requeued %s %s of %s", item.kind, item.idx, item.job_id)
    for queue in ALL_QUEUES:
        # The dispatcher's priorities 3, 6 and 9 live in their own Redis lists (kombu's scheme).
        lists = (queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
        metrics.QUEUE_DEPTH.labels(queue=queue).set(sum(client.llen(k) for k in lists))
    for quality in QUALITIES:
        metrics.QUEUE_OLDEST_JOB_AGE.labels(quality=quality).set(ages.get(quality, 0.0))
    for queue, n in queue_consumers(client).items():
        metrics.QUEUE_CONSUMERS.labels(queue=queue).set(n)
    return len(reaped.requeue)


def run_forever(settings: Settings) -> None:
    configure(settings)
    services = build_services(settings, Publisher(app), pool_size=2)
    pool, client, publisher = services.pool, services.redis, services.publisher
    metrics.start_metrics_server(settings.scheduler_metrics_port, environ={})
    log.info("scheduler running; metrics on :%s/metrics", settings.scheduler_metrics_port)
    threading.Thread(
        target=dispatch.serve, args=(settings, publisher.step), name="dispatch", daemon=True
    ).start()
    while True:
        try:
            run_once(settings, pool, client, publisher, services.storage)
        except Exception:  # Redis or PostgreSQL away for a moment: try again next round
            log.exception("scheduler round failed")
        time.sleep(settings.reaper_interval_seconds)
