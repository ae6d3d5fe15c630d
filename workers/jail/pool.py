"""The warm pool: hands out single-use render jails, keeping the next one started while idle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from farm.config import Settings
from workers.jail.jail import Jail
from workers.jail.limits import Limits


class JailPool:
    """One per worker process: at most one jail waits (a worker process renders one at a time)."""

    def __init__(self, settings: Settings, limits: Limits | None = None) -> None:
        self.settings = settings
        self.limits = limits or Limits.from_settings(settings)
        self.warm = settings.warm_sandbox
        self._next: Jail | None = None

    def start(self) -> None:
        """Warm the next jail (no-op when warming is off or one is waiting)."""
        if self.warm and (self._next is None or not self._next.ready()):
            if self._next is not None:
                self._next.close()
            self._next = Jail(self.settings, self.limits, warm=True)

    @contextmanager
    def take(self, warm_next: Callable[[], bool] = lambda: True) -> Iterator[Jail]:
        """The jail for one plan or chunk; closed (and its files removed) when the block ends.
        ``warm_next`` (asked then): whether to warm the next one now; if not, the caller calls
        ``start`` once its step's work is done."""
        jail, self._next = self._next, None
        if jail is None or not jail.ready():  # none waiting, or it died while it waited
            if jail is not None:
                jail.close()
            jail = Jail(self.settings, self.limits, warm=True)
        try:
            yield jail
        finally:
            jail.close()
            if warm_next():
                self.start()  # warm the next while this worker uploads and waits for work

    def close(self) -> None:
        if self._next is not None:
            self._next.close()
            self._next = None
