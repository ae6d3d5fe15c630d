"""Who consumes what: every worker process writes which queues it consumes and with how many
render slots to Redis (``farm:consumers:<host>:<pid>``, expiring), so the scheduler can export
consumers per queue and a planner can see how many render slots its queue has."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import redis

from farm.config import Settings
from workers.routing import ALL_QUEUES

CONSUMER_KEY = "farm:consumers:"
BEAT_SECONDS = 10
EXPIRES_SECONDS = 30  # three beats missed: the worker is gone


def _own_key() -> str:
    return f"{CONSUMER_KEY}{socket.gethostname()}:{os.getpid()}"


def beat_forever(settings: Settings, queues: list[str], slots: int) -> None:
    """Announce this worker (run in a daemon thread of the worker's main process)."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    key = _own_key()
    while True:
        with contextlib.suppress(Exception):  # Redis away for a moment: beat next time
            client.set(key, f"{','.join(queues)}|{slots}", ex=EXPIRES_SECONDS)
        threading.Event().wait(BEAT_SECONDS)


def forget(settings: Settings) -> None:
    """Withdraw this worker at shutdown, so planners stop counting its slots at once (an entry
    of a worker that died without this expires after EXPIRES_SECONDS)."""
    with contextlib.suppress(Exception):
        redis.Redis.from_url(settings.redis_url, socket_timeout=2).delete(_own_key())


def _workers(client: redis.Redis) -> list[tuple[list[str], int]]:
    """(queues, render slots) of every worker that beat recently."""
    found = []
    for key in client.scan_iter(f"{CONSUMER_KEY}*"):
        raw = client.get(key)
        value = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        queues, _, slots = value.partition("|")
        found.append((queues.split(","), int(slots) if slots.isdigit() else 1))
    return found


def queue_consumers(client: redis.Redis) -> dict[str, int]:
    """Workers that beat recently, counted per queue they consume."""
    counts = dict.fromkeys(ALL_QUEUES, 0)
    for queues, _ in _workers(client):
        for queue in queues:
            if queue in counts:
                counts[queue] += 1
    return counts


def queue_slots(client: redis.Redis, queue: str) -> int:
    """Render slots of all the workers consuming ``queue`` (0: none known)."""
    return sum(slots for queues, slots in _workers(client) if queue in queues)
