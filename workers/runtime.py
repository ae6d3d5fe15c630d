"""What a worker process holds: the farm's services (``farm.services.build_services``) and its
jail pools. Built once per process, after Celery forks its pool children (connections don't
survive a fork).
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.config import Settings, load_settings
from farm.db import Pool
from farm.services import Publisher as FarmPublisher
from farm.services import Services, build_services
from farm.storage import Storage
from workers import media
from workers.celery_app import app, configure
from workers.jail.jail import sweep_stale
from workers.jail.pool import JailPool
from workers.publish import Publisher


@dataclass
class Runtime:
    services: Services
    jails: JailPool  # render jails (plans, helpers, chunks)
    media_jails: JailPool  # the stitch's (workers/media/stitch.py)

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def pool(self) -> Pool:
        return self.services.pool

    @property
    def storage(self) -> Storage:
        return self.services.storage

    @property
    def publisher(self) -> FarmPublisher:
        return self.services.publisher


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
            services=build_services(settings, Publisher(app), pool_size=4),
            jails=JailPool(settings),
            media_jails=JailPool(settings, media.stitch_limits(settings), "media"),
        )
        _runtime.jails.start()
        _runtime.media_jails.start()
    return _runtime


def reset_after_fork() -> None:
    global _runtime
    _runtime = None
