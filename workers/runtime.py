"""What a worker process holds: settings, a DB pool, storage, the publisher, the jail pool.

Built once per process, after Celery forks its pool children (connections don't survive a
fork). The one place workers build their services.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.config import Settings, load_settings
from farm.db import Pool, open_pool
from farm.storage import S3Storage, Storage
from workers.celery_app import app, configure
from workers.jail.jail import sweep_stale
from workers.jail.pool import JailPool
from workers.publish import Publisher


@dataclass
class Runtime:
    settings: Settings
    pool: Pool
    storage: Storage
    publisher: Publisher
    jails: JailPool


_runtime: Runtime | None = None
_settings: Settings | None = None


def set_settings(settings: Settings) -> None:
    """Called by ``farm worker`` before the pool forks; children build their runtime from it."""
    global _settings, _runtime
    _settings = settings
    _runtime = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = _settings or load_settings()
        configure(settings)
        sweep_stale()  # jails a crashed worker left behind (only those whose owner is gone)
        _runtime = Runtime(
            settings=settings,
            pool=open_pool(settings, max_size=4),
            storage=S3Storage(settings),
            publisher=Publisher(app),
            jails=JailPool(settings),
        )
        _runtime.jails.start()
    return _runtime


def reset_after_fork() -> None:
    global _runtime
    _runtime = None
