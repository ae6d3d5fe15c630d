"""A plan's hand-off, the worker's side: while a plan's program still runs, it writes its plan
as one line of JSON, the worker answers with one line (the program's side is
``jail/program/handoff.py``).

The line is scene-controlled bytes like any report: capped, parsed by ``outputs.load_report``
only, and handed to the step's ``on_plan`` (workers/steps/plan.py), which validates it as a plan
report. Whatever goes wrong, the program gets an empty answer and finishes as a plain plan.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from workers.jail import outputs

log = logging.getLogger("farm.jail")

ENV = "JAIL_HANDOFF_FD"

# What the step does with the plan: the answer for the program (None: finish as a plain plan)
# and the wall clock the rest of the run gets from now (None: the plan's own goes on).
OnPlan = Callable[[dict[str, Any]], tuple[dict[str, Any] | None, float | None]]


class Channel:
    """The worker's ends of one jail's two hand-off pipes (made when the jail is spawned)."""

    def __init__(self) -> None:
        self.fd, self._theirs_write = os.pipe()  # plan: program -> worker
        self._theirs_read, self._answer = os.pipe()  # answer: worker -> program
        os.set_blocking(self.fd, False)
        self._buffer = bytearray()
        self.on_plan: OnPlan | None = None
        self.open = True
        self._theirs_open = True

    def program_fds(self) -> tuple[int, int]:
        """The ends the program gets, in ``ENV``'s order (to the worker, from the worker)."""
        return self._theirs_write, self._theirs_read

    def spawned(self) -> None:
        """The program has its ends now: the worker's copies go (so either side sees EOF)."""
        if self._theirs_open:
            self._theirs_open = False
            for fd in (self._theirs_write, self._theirs_read):
                os.close(fd)

    def readable(self) -> float | None:
        """Read what the program wrote; at a whole line, answer it. Returns the new wall clock
        the step asked for, if it asked for one."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        self._buffer += data
        if data and b"\n" not in data and len(self._buffer) <= outputs.REPORT_BYTES:
            return None
        line = bytes(self._buffer).split(b"\n", 1)[0]
        answer, wall = None, None
        if data and len(line) <= outputs.REPORT_BYTES and self.on_plan is not None:
            try:
                plan = outputs.load_report(line)
            except outputs.OutputError:
                log.info("the plan's hand-off was unreadable; it finishes as a plain plan")
            else:
                answer, wall = self.on_plan(plan)
        self._reply(answer)
        return wall

    def _reply(self, answer: dict[str, Any] | None) -> None:
        line = json.dumps({"draw": None, **(answer or {})}) + "\n"
        with contextlib.suppress(OSError):  # it is gone: the run's end says how
            os.write(self._answer, line.encode())
        self.close()

    def close(self) -> None:
        """No (more) hand-off: a program that asks gets an empty answer."""
        self.spawned()
        if self.open:
            self.open = False
            for fd in (self.fd, self._answer):
                os.close(fd)
