"""A plan's hand-off, the worker's side: while a plan's program still runs, it writes its plan
as one line of JSON, the worker answers with one line (the program's side is
``jail/program/handoff.py``).

The line is scene-controlled bytes like any report: capped, parsed by ``outputs.load_report``
only, and handed to the step's ``on_plan`` (workers/steps/plan.py), which validates it as a plan
report. Whatever goes wrong, the program gets an empty answer and finishes as a plain plan.

A plan pass that shares its job with other passes asks, before each animation it reaches,
whether it draws it: a short line ``{"claim": N}``, answered ``{"draw": true|false, "stop":
true|false, "encoders": E}`` by the step's ``on_claim`` (at most ``outputs.MAX_ANIMATIONS`` of
them; past that, or on anything else that is not a plan, the channel closes and the program draws
what it reaches). ``E``, from ``encoders``, is how many movies the pass may encode at once from
then on: its share of the node's CPUs, which changes as other passes start or end there.
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
# What the program does with the play it asks for: "draw" it, "skip" it (another pass draws
# it), or "stop" (its pass is no longer needed).
OnClaim = Callable[[int], str]

# A claim line, at most: {"claim": N} with N below outputs.MAX_ANIMATIONS.
_CLAIM_BYTES = 64


class Channel:
    """The worker's ends of one jail's two hand-off pipes (made when the jail is spawned)."""

    def __init__(self) -> None:
        self.fd, self._theirs_write = os.pipe()  # plan: program -> worker
        self._theirs_read, self._answer = os.pipe()  # answer: worker -> program
        os.set_blocking(self.fd, False)
        self._buffer = bytearray()
        self.on_plan: OnPlan | None = None
        self.on_claim: OnClaim | None = None
        # How many movies a claiming pass may encode at once now (None: the answer says not).
        self.encoders: Callable[[], int] | None = None
        self._claims = 0
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
        while data and self.on_claim is not None and b"\n" in self._buffer:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            play = _claim_of(line)
            if play is None:
                break  # not a claim: read as the plan
            self._buffer = bytearray(rest)
            self._claims += 1
            if self._claims > outputs.MAX_ANIMATIONS:
                self.close()  # more claims than a scene has animations
                return None
            said = self.on_claim(play)
            told: dict[str, Any] = {"draw": said == "draw", "stop": said == "stop"}
            if self.encoders is not None:
                told["encoders"] = self.encoders()
            self._write(told)
        if data and b"\n" not in self._buffer and len(self._buffer) <= outputs.REPORT_BYTES:
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
        self._write({"draw": None, **(answer or {})})
        self.close()

    def _write(self, answer: dict[str, Any]) -> None:
        if not self.open:
            return
        with contextlib.suppress(OSError):  # it is gone: the run's end says how
            os.write(self._answer, (json.dumps(answer) + "\n").encode())

    def close(self) -> None:
        """No (more) hand-off: a program that asks gets an empty answer."""
        self.spawned()
        if self.open:
            self.open = False
            for fd in (self.fd, self._answer):
                os.close(fd)


def _claim_of(line: bytes) -> int | None:
    """The play a claim line asks for; None when the line is not a claim."""
    if len(line) > _CLAIM_BYTES:
        return None
    try:
        said = json.loads(line)
    except ValueError:
        return None
    if not isinstance(said, dict) or list(said) != ["claim"]:
        return None
    play = said["claim"]
    return play if type(play) is int and 0 <= play < outputs.MAX_ANIMATIONS else None
