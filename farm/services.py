"""What a farm process holds: its settings, a PostgreSQL pool, object storage, Redis and the
publisher. Built once per process by ``build_services`` (after a fork: connections don't
survive one), by the API's ``create_app``, the worker, the scheduler and the ``farm`` commands.

The publisher is a protocol: the one that sends Celery messages lives in ``workers/`` and is
handed in by the adapter, so ``farm`` never imports Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import redis

from farm.config import Settings
from farm.db import Pool, open_pool
from farm.storage import S3Storage, Storage


class Publisher(Protocol):
    """Sends work to the queues; called only after the transaction that recorded it committed."""

    def step(self, job_id: str, kind: str, idx: int, quality: str) -> None: ...
    def webhook(self, job_id: str, attempt: int, countdown: float = 0) -> None: ...


class NoPublisher:
    """The publisher of a process that sends no work (``farm keys``, ``farm migrate``)."""

    def step(self, job_id: str, kind: str, idx: int, quality: str) -> None:
        raise RuntimeError("this process publishes no work")

    def webhook(self, job_id: str, attempt: int, countdown: float = 0) -> None:
        raise RuntimeError("this process publishes no work")


@dataclass
class Services:
    settings: Settings
    pool: Pool
    storage: Storage
    redis: redis.Redis
    publisher: Publisher

    def close(self) -> None:
        """Close the pool (the other clients hold no connection worth closing)."""
        self.pool.close()


def build_services(
    settings: Settings, publisher: Publisher | None = None, *, pool_size: int = 8
) -> Services:
    """Open the pool and build the clients; S3 and Redis connect on first use."""
    return Services(
        settings=settings,
        pool=open_pool(settings, max_size=pool_size),
        storage=S3Storage(settings),
        redis=redis.Redis.from_url(settings.redis_url, socket_timeout=5),
        publisher=publisher or NoPublisher(),
    )
