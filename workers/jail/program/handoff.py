"""A plan's hand-off to its worker while it still runs (the program's side).

A plan that leaves animations for chunks need not end for them to start: the runner writes its
plan as one line of JSON to the worker (``ask``), the worker records the plan, sends the other
chunks out and answers with one line saying which range the runner draws itself, right away,
with manim imported (runner._plan_and_hand_off). The worker's side is
``workers/jail/handoff.py``; it treats the plan line exactly as it treats a report.

A plan pass that shares its job with helper passes (``claim``) asks the worker, on the same
channel, for each animation it reaches whether it draws it: one line each way per animation.
The answer also says how many movies the pass may encode at once from then on (``encoders``):
the worker sees the other passes that start on the pass's node, the jail does not.

The two descriptors are named by ``JAIL_HANDOFF_FD`` ("<to worker>,<from worker>"), taken out of
the environment before any scene code runs (``take``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

ENV = "JAIL_HANDOFF_FD"
# The exit status of a pass its worker stopped (``claim``).
STOPPED = 4
# An answer's encoders above this are refused (no node has more CPUs).
MAX_ENCODERS = 256
_fds: list[int] = []
# The encoders the last claim's answer allowed (None: no answer said).
encoders: int | None = None


def take() -> None:
    """Keep the channel's descriptors and drop their names from the environment."""
    value = os.environ.pop(ENV, "")
    parts = value.split(",")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        _fds[:] = [int(p) for p in parts]


def drop() -> None:
    """Close the channel in this process (a child that runs scene code must not hold it)."""
    for fd in _fds:
        os.close(fd)
    _fds.clear()


def claim(play: int) -> bool:
    """Whether this pass draws ``play`` (no other pass of the job claimed it first). Without a
    channel, or an answer, it does: a pass alone draws everything it reaches. Keeps the
    answer's ``encoders`` in ``encoders``."""
    global encoders
    if not _fds:
        return True
    to_worker, from_worker = _fds
    try:
        os.write(to_worker, (json.dumps({"claim": play}) + "\n").encode())
        answer = _read_line(from_worker)
    except OSError:
        return True
    try:
        said = json.loads(answer or b"null")
    except ValueError:
        return True
    if isinstance(said, dict):
        allowed = said.get("encoders")
        if type(allowed) is int and 1 <= allowed <= MAX_ENCODERS:
            encoders = allowed
    if isinstance(said, dict) and said.get("stop") is True:
        # A helper pass the plan no longer needs (it drew nothing): end it here, mid-scene.
        sys.stdout.flush()
        os._exit(STOPPED)
    return not (isinstance(said, dict) and said.get("draw") is False)


def _read_line(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


def ask(plan: dict[str, Any]) -> dict[str, Any] | None:
    """Send the plan, wait for the worker's answer; None without a channel or an answer."""
    if not _fds:
        return None
    to_worker, from_worker = _fds
    data = (json.dumps(plan) + "\n").encode()
    try:
        while data:
            data = data[os.write(to_worker, data) :]
        os.close(to_worker)
        answer = _read_line(from_worker)
    except OSError:
        return None
    finally:
        _fds.clear()
    try:
        said = json.loads(answer or b"null")
    except ValueError:
        return None
    return said if isinstance(said, dict) else None
