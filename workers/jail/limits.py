"""What one jail may use: the numbers, from the settings, in one place.

Memory and processes are held per jail by its cgroup where the host gives one (see cgroup.py),
and per process by rlimits everywhere. Disk is everything the jail can write: its scratch
directory (walked by the watchdog) plus its two sized tmpfs mounts, /tmp and /dev/shm, whose
sizes come out of the same budget; the jail's root is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from farm.config import Settings

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    cpu_seconds: int
    # The jail's cgroup (all its processes and its tmpfs pages); RLIMIT_AS where none exists.
    memory_bytes: int
    processes: int
    file_bytes: int
    disk_bytes: int  # scratch + /tmp + /dev/shm
    files: int
    open_files: int
    log_bytes: int
    # Whether RLIMIT_AS may hold memory per process when the host gives no cgroup. Off for
    # OpenGL renders: NVIDIA's EGL reserves far more address space than it uses (the pod's
    # cgroup is then the wall).
    address_space: bool = True
    # Every jail process's nice value (FARM_JAIL_NICE): the worker's heartbeats and, on a node
    # it shares, the API come before scene code.
    niceness: int = 0

    @classmethod
    def from_settings(
        cls, s: Settings, wall_seconds: float | None = None, renderer: str | None = None
    ) -> Limits:
        return cls(
            wall_seconds=wall_seconds or s.chunk_timeout_seconds,
            cpu_seconds=s.chunk_cpu_seconds,
            memory_bytes=s.chunk_memory_mb * MB,
            processes=s.chunk_max_processes,
            file_bytes=s.chunk_max_file_mb * MB,
            disk_bytes=s.chunk_max_disk_mb * MB,
            files=s.chunk_max_files,
            open_files=s.chunk_max_open_files,
            log_bytes=s.chunk_log_bytes,
            address_space=(renderer or s.renderer) != "opengl",
            niceness=s.jail_nice,
        )

    @classmethod
    def for_media(cls, s: Settings, wall_seconds: float) -> Limits:
        """The media jail: ffmpeg over the chunk or job video, nothing of the scene's code."""
        video = s.max_output_mb * MB
        return cls(
            wall_seconds=wall_seconds,
            cpu_seconds=int(wall_seconds) + 1,
            memory_bytes=max(1024 * MB, s.chunk_memory_mb * MB // 2),
            processes=32,
            file_bytes=video + MB,
            # The inputs and the joined video in the scratch, plus the two tmpfs mounts.
            disk_bytes=2 * video + 576 * MB,
            files=10_000,
            open_files=256,
            log_bytes=16 * 1024,
            niceness=s.jail_nice,
        )

    def with_(self, **changes: Any) -> Limits:
        return replace(self, **changes)

    @property
    def tmpfs_bytes(self) -> int:
        """Size of /tmp and of /dev/shm each: an eighth of the disk budget, at most 256 MB."""
        return max(MB, min(256 * MB, self.disk_bytes // 8))

    @property
    def scratch_bytes(self) -> int:
        """What is left of the disk budget for the scratch directory."""
        return max(MB, self.disk_bytes - 2 * self.tmpfs_bytes)
