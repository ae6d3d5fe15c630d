"""``farm worker``: a Celery worker for chosen queues, with metrics and a consumer heartbeat."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from celery import signals

from farm import metrics
from farm.config import Settings
from farm.presets import QUALITIES
from workers import runtime
from workers.celery_app import app, configure
from workers.routing import ALL_QUEUES, RENDER_QUEUES
from workers.scheduler import CONSUMER_KEY


def _heartbeat(settings: Settings, queues: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    key = f"{CONSUMER_KEY}{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            client.set(key, ",".join(queues), ex=30)
        except Exception:
            pass
        threading.Event().wait(10)


def run(settings: Settings, queues: list[str], concurrency: int, loglevel: str = "INFO") -> None:
    unknown = set(queues) - set(ALL_QUEUES)
    if unknown:
        raise SystemExit(f"unknown queues: {', '.join(sorted(unknown))}")
    configure(settings)
    runtime.set_settings(settings)
    import workers.tasks  # noqa: F401  (registers the tasks on the app)

    metrics.prime_labels(QUALITIES, RENDER_QUEUES)
    for queue in queues:
        metrics.WORKER_SLOTS.labels(queue=queue).set(concurrency)
    metrics.start_metrics_server(settings.worker_metrics_port)
    threading.Thread(target=_heartbeat, args=(settings, queues), daemon=True).start()
    app.worker_main([
        "worker", "--queues", ",".join(queues), "--concurrency", str(concurrency),
        "--pool", "prefork", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        "--hostname", f"farm-{'+'.join(q.split('.')[-1] for q in queues)}@%h",
    ])


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    runtime.reset_after_fork()


@signals.worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())
