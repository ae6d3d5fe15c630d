"""One cgroup per jail: memory and process count held for the whole job, not per process.

RLIMIT_AS and RLIMIT_NPROC hold one process (or one uid); a scene's children, and the tmpfs
pages it writes to /tmp and /dev/shm, are only counted together by a cgroup. Where the host lets
the worker create one (root on a cgroup v1 host such as the development machine, a delegated
subtree on cgroup v2), each jail gets its own under the worker's cgroup: cgroup v2
``memory.max``, ``memory.swap.max``, ``pids.max``; v1 ``memory.limit_in_bytes`` (and memsw),
``pids.max``. Elsewhere ``JobCgroup.create`` returns None and the jail relies on rlimits, sized
tmpfs mounts and the disk walk (and, on Kubernetes, the pod's cgroup as the outer wall).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("farm.jail")

ROOT = Path("/sys/fs/cgroup")
PREFIX = "farm-jail-"


def _own_path(controller: str) -> str | None:
    """This process's cgroup path for a v1 controller, or for v2 with controller ''."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class JobCgroup:
    """The cgroup(s) of one jail: a v2 directory, or v1 memory + pids directories."""

    def __init__(self, dirs: list[Path], v2: bool) -> None:
        self.dirs, self.v2 = dirs, v2

    @classmethod
    def create(cls, name: str, memory_bytes: int, processes: int) -> JobCgroup | None:
        """A fresh cgroup with the limits, or None where the host allows none."""
        if not name.startswith(PREFIX):
            name = PREFIX + name
        for make in (cls._v2, cls._v1):
            try:
                made = make(name, memory_bytes, processes)
            except OSError as exc:
                log.debug("no %s cgroup for jails: %s", make.__name__, exc)
                continue
            if made is not None:
                return made
        return None

    @classmethod
    def _v2(cls, name: str, memory_bytes: int, processes: int) -> JobCgroup | None:
        own = _own_path("")
        if own is None or not (ROOT / "cgroup.controllers").exists():
            return None  # v1 or hybrid host: the v2 hierarchy there holds no controllers
        parent = ROOT / own.lstrip("/")
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if "memory" not in enabled or "pids" not in enabled:
            return None
        path = parent / name
        path.mkdir()
        group = cls([path], v2=True)
        try:
            _write(path / "memory.max", str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(path / "memory.swap.max", "0")
            _write(path / "pids.max", str(processes))
        except OSError:
            group.destroy()
            raise
        return group

    @classmethod
    def _v1(cls, name: str, memory_bytes: int, processes: int) -> JobCgroup | None:
        mem_own, pids_own = _own_path("memory"), _own_path("pids")
        if mem_own is None or pids_own is None or not (ROOT / "memory").is_dir():
            return None
        memory = ROOT / "memory" / mem_own.lstrip("/") / name
        pids = ROOT / "pids" / pids_own.lstrip("/") / name
        memory.mkdir()
        group = cls([memory], v2=False)
        try:
            pids.mkdir()
            group.dirs.append(pids)
            _write(memory / "memory.limit_in_bytes", str(memory_bytes))
            swap = memory / "memory.memsw.limit_in_bytes"
            if swap.exists():
                _write(swap, str(memory_bytes))
            _write(pids / "pids.max", str(processes))
        except OSError:
            group.destroy()
            raise
        return group

    def enter_files(self) -> list[str]:
        """The cgroup.procs files a child writes its own pid to (before it execs bwrap)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def procs(self) -> list[int]:
        pids: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (a fork bomb included)."""
        if self.v2 and (self.dirs[0] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs[0] / "cgroup.kill", "1")
            return
        for _ in range(50):  # a bomb may fork between the read and the kill: repeat
            pids = self.procs()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def empty(self, wait_seconds: float = 5.0) -> bool:
        """Whether every process of the jail is gone (waits up to ``wait_seconds``)."""
        deadline = time.monotonic() + wait_seconds
        while self.procs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def limit_hit(self) -> str | None:
        """``memory``: the kernel OOM-killed inside it; ``processes``: a fork was refused."""
        if self._counter("memory.events" if self.v2 else "memory.oom_control", "oom_kill") > 0:
            return "memory"
        if self._counter("pids.events", "max") > 0:
            return "processes"
        return None

    def memory_peak(self) -> int:
        """Most bytes the jail held at once (v1 max_usage, v2 memory.peak), 0 if unknown."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.dirs[0] / name).read_text().split()[0])
        return 0

    def _counter(self, filename: str, key: str) -> int:
        for d in self.dirs:
            path = d / filename
            if not path.exists():
                continue
            with contextlib.suppress(OSError, ValueError):
                for line in path.read_text().splitlines():
                    words = line.split()
                    if len(words) == 2 and words[0] == key:
                        return int(words[1])
        return 0

    def destroy(self) -> None:
        """Kill what is left and remove the cgroup (an emptied cgroup can always be removed)."""
        self.kill()
        self.empty()
        for d in self.dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last process is still being torn down


def sweep_stale() -> int:
    """Remove jail cgroups whose worker process is gone (named farm-jail-<pid>-...)."""
    removed = 0
    parents: list[Path] = []
    own = _own_path("")
    if own is not None and (ROOT / "cgroup.controllers").exists():
        parents.append(ROOT / own.lstrip("/"))
    for controller in ("memory", "pids"):
        path = _own_path(controller)
        if path is not None and (ROOT / controller).is_dir():
            parents.append(ROOT / controller / path.lstrip("/"))
    for parent in parents:
        with contextlib.suppress(OSError):
            for d in parent.glob(PREFIX + "*"):
                if owner_alive(d.name):
                    continue
                group = JobCgroup([d], v2=(d.parents[0] / "cgroup.controllers").exists())
                group.destroy()
                removed += 1
    return removed


def owner_alive(name: str) -> bool:
    """Whether the worker process named in ``farm-jail-<pid>-...`` still runs."""
    owner = name[len(PREFIX) :].split("-", 1)[0]
    if not name.startswith(PREFIX) or not owner.isdigit():
        return True  # not a name this version makes: leave it alone
    pid = int(owner)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
