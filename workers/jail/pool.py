"""The warm pool: hands out single-use jails of one program, keeping the next one started while
idle (a render jail has imported manim, a media jail FFmpeg's libraries, before its step)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from farm.config import Settings
from workers.jail.jail import Jail
from workers.jail.limits import Limits

# How often a deferred warm-up asks whether it may start (``start_when``).
WAIT_SECONDS = 0.1


class JailPool:
    """One per worker process and program: at most one jail waits (a worker process runs one
    step at a time)."""

    def __init__(
        self, settings: Settings, limits: Limits | None = None, program: str = "runner"
    ) -> None:
        self.settings = settings
        self.limits = limits or Limits.from_settings(settings)
        self.program = program
        self.warm = settings.warm_sandbox
        self._next: Jail | None = None
        # The next jail is started under this lock: by the worker, or by a deferred warm-up.
        self._lock = threading.Lock()
        self._deferred: threading.Event | None = None  # set: that warm-up is called off

    @property
    def waiting(self) -> bool:
        """Whether a warm jail waits for the next step now."""
        jail = self._next
        return jail is not None and jail.ready()

    def start(self) -> None:
        """Warm the next jail (no-op when warming is off or one is waiting)."""
        self._call_off()
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self.warm and (self._next is None or not self._next.ready()):
            if self._next is not None:
                self._next.close()
            self._next = Jail(self.settings, self.limits, self.program, warm=True)

    def start_when(self, ready: Callable[[], bool], within: float) -> None:
        """Warm the next jail once ``ready()`` (asked from a thread) says so, or ``within``
        seconds from now. Why: a worker whose step ends while its job still runs on the same
        CPUs (a helper beside its plan's last animations) leaves them the CPU that importing
        manim takes. A step that arrives first takes a jail of its own (``take`` calls the
        warm-up off)."""
        self._call_off()
        if not self.warm:
            return
        off = self._deferred = threading.Event()
        deadline = time.monotonic() + within

        def wait() -> None:
            while not off.is_set() and time.monotonic() < deadline:
                try:
                    if ready():
                        break
                except Exception:  # whoever answers is away: the deadline holds
                    pass
                off.wait(WAIT_SECONDS)
            with self._lock:
                if not off.is_set():
                    self._start()

        threading.Thread(target=wait, name="warm-later", daemon=True).start()

    def _call_off(self) -> None:
        if self._deferred is not None:
            self._deferred.set()
            self._deferred = None

    @contextmanager
    def take(self, warm_next: Callable[[], bool] = lambda: True) -> Iterator[Jail]:
        """The jail for one step; closed (and its files removed) when the block ends.
        ``warm_next`` (asked then): whether to warm the next one now; if not, the caller calls
        ``start`` or ``start_when`` once its step's work is done."""
        self._call_off()
        with self._lock:
            jail, self._next = self._next, None
        if jail is None or not jail.ready():  # none waiting, or it died while it waited
            if jail is not None:
                jail.close()
            jail = Jail(self.settings, self.limits, self.program, warm=True)
        try:
            yield jail
        finally:
            jail.close()
            if warm_next():
                self.start()  # warm the next while this worker uploads and waits for work

    def close(self) -> None:
        self._call_off()
        with self._lock:
            if self._next is not None:
                self._next.close()
                self._next = None
