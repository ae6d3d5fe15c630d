"""The watchdog: what the worker does while a jail runs.

It reads the jail's output into a capped log, and stops the jail when it passes its wall clock,
writes more than its disk budget or too many files, or when the heartbeat says the job was
canceled or the lease was lost. Stopping means SIGKILL to the jail's process group and cgroup:
bwrap's --die-with-parent and the pid namespace take every process the scene started with it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from workers.jail.handoff import Channel
from workers.jail.limits import Limits

Popen = subprocess.Popen[bytes]


class LogBuffer:
    """Keeps the head and the tail of a stream, dropping the middle past the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.cap // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        excess = len(self.tail) - self.cap // 2
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        middle = f"\n[log truncated: {self.dropped} bytes dropped]\n" if self.dropped else ""
        return (
            bytes(self.head).decode("utf-8", "replace")
            + middle
            + bytes(self.tail).decode("utf-8", "replace")
        )


def usage(root: Path, max_files: int) -> tuple[int, int]:
    """Bytes and entries under root, stopping early past max_files (a million files is cheap)."""
    total = count = 0
    stack = [root]
    while stack and count <= max_files:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total, count


def kill_group(proc: Popen) -> None:
    """SIGKILL the jail's process group (bwrap and, through its pid namespace, all inside)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def watch(
    proc: Popen,
    log: LogBuffer,
    scratch: Path,
    limits: Limits,
    keep_going: Callable[[], bool],
    heartbeat_seconds: float,
    kill: Callable[[], None],
    channel: Channel | None = None,
) -> str | None:
    """Watch until the jail exits; returns why it was stopped (timeout | disk | files |
    canceled) or None when it exited by itself. A plan handed off on ``channel`` is answered
    here, and may restart the wall clock with a new limit (the range it draws next)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    started = time.monotonic()
    next_check = started + 0.5
    next_beat = started + heartbeat_seconds
    stopped: str | None = None
    open_pipe = True
    while True:
        if channel is not None and (not channel.open or stopped):
            channel = None
        watched = ([fd] if open_pipe else []) + ([channel.fd] if channel is not None else [])
        if watched:
            ready, _, _ = select.select(watched, [], [], 0.2 if open_pipe else 0.1)
            if channel is not None and channel.fd in ready:
                wall = channel.readable()
                if wall is not None:
                    started, limits = time.monotonic(), limits.with_(wall_seconds=wall)
            if open_pipe and fd in ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    data = b""
                if data:
                    log.add(data)
                else:
                    open_pipe = False
        else:
            # Its output is closed: wait for the exit itself (returns as soon as it comes).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
        if proc.poll() is not None and not open_pipe:
            return stopped
        if proc.poll() is not None:
            # The program is gone; drain what is left without waiting on grandchildren forever.
            open_pipe = _drain(fd, log)
            if not open_pipe:
                return stopped
        now = time.monotonic()
        if stopped:
            continue
        if now - started > limits.wall_seconds:
            stopped = "timeout"
        elif now >= next_check:
            next_check = now + 0.5
            used, files = usage(scratch, limits.files)
            if used > limits.scratch_bytes:
                stopped = "disk"
            elif files > limits.files:
                stopped = "files"
        if not stopped and now >= next_beat:
            next_beat = now + heartbeat_seconds
            if not keep_going():
                stopped = "canceled"
        if stopped:
            kill()


def _drain(fd: int, log: LogBuffer) -> bool:
    for _ in range(50):
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            return True
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        log.add(data)
    return True
