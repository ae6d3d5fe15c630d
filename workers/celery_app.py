"""The one Celery app. Tasks register on it at import; settings are applied by ``configure``."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from farm.config import Settings
from workers.liveness import ConsumerHeartbeat
from workers.routing import ALL_QUEUES

app = Celery("farm", set_as_current=False)
app.steps["consumer"].add(ConsumerHeartbeat)  # the liveness probe's heartbeat (workers/liveness.py)


_configured_for: str | None = None


def configure(settings: Settings) -> Celery:
    """Apply the settings once per process. Changing the conf of an app that already holds
    broker connections (a second ``create_app`` in one test process) can strand messages in
    its producer pool, so a repeat call with the same broker is a no-op."""
    global _configured_for
    if _configured_for == settings.redis_url:
        return app
    if _configured_for is not None:
        raise RuntimeError("the Celery app is already configured for another broker")
    _configured_for = settings.redis_url
    app.conf.update(
        broker_url=settings.redis_url,
        # Results live in PostgreSQL; Celery's result backend would be a second source of truth.
        result_backend=None,
        task_ignore_result=True,
        # One direct exchange per queue, so a message lands in exactly the queue it names.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES
        ],
        task_default_queue="render.medium",
        task_serializer="json",
        accept_content=["json"],
        # Late ack + prefetch 1: a message leaves Redis only when its task has finished.
        task_acks_late=True,
        task_reject_on_worker_lost=False,  # the reaper, not a redelivery loop, recovers lost work
        worker_prefetch_multiplier=1,
        # Recovery is the reaper's job (leases in PostgreSQL); a long visibility timeout keeps
        # Redis from handing a slow chunk's message to a second worker while it still renders.
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=False,
    )
    return app
