"""What a worker process holds: settings, a DB pool, storage, the publisher, the sandbox.

Built once per process, after Celery forks its pool children (connections don't survive a fork).
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.config import Settings, load_settings
from farm.db import Pool, open_pool
from farm.storage import S3Storage
from workers.celery_app import app, configure
from workers.publish import Publisher
from workers.sandbox import Jails, Limits, Sandbox


@dataclass
class Runtime:
    settings: Settings
    pool: Pool
    storage: S3Storage
    publisher: Publisher
    sandbox: Sandbox
    jails: Jails


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
        sandbox = Sandbox(settings)
        _runtime = Runtime(
            settings=settings,
            pool=open_pool(settings, max_size=4),
            storage=S3Storage(settings),
            publisher=Publisher(app),
            sandbox=sandbox,
            jails=Jails(sandbox, Limits.from_settings(settings), warm=settings.warm_sandbox),
        )
        _runtime.jails.start()
    return _runtime


def reset_after_fork() -> None:
    global _runtime
    _runtime = None
