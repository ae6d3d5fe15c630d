"""The render sandbox: runs the scene runner, and so the user's code, in a bubblewrap jail.

What the jail holds: read-only binds of the system (/usr), Python, the venv, TeX, fonts, and the
two runner modules; a fresh, empty scratch directory per run as ``/work``; a size-capped /tmp.
What it lacks: the worker's environment (bwrap itself starts with an empty one, because
``--clearenv`` still leaves the parent's environment readable at /proc/1/environ), config files,
credentials, other jobs' files and processes, and any network (own network namespace).
It runs as an unprivileged uid so RLIMIT_NPROC holds, in its own pid namespace so every process
it starts dies with it, with rlimits on CPU, memory, file size, open files and processes; the
parent enforces wall clock, disk use, file count and log size, and stops the run when its
heartbeat says the job was canceled or the lease was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.assets import MISSES_FILE
from farm.config import Settings

RUNNER_MODULES = ("__init__.py", "scene_runner.py", "manim_patch.py", "scene_assets.py")
SANDBOX_ROOT = "/work"
ASSETS_ROOT = "/assets"  # the job's fetched assets, read-only (workers/scene_assets.py)
RUNNER_ROOT = "/opt/farm-runner"
VENV_ROOT = "/opt/farm-venv"


Popen = subprocess.Popen[bytes]


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    cpu_seconds: int
    memory_bytes: int
    processes: int
    file_bytes: int
    disk_bytes: int
    files: int
    open_files: int
    log_bytes: int

    @classmethod
    def from_settings(cls, s: Settings, wall_seconds: float | None = None) -> Limits:
        mb = 1024 * 1024
        return cls(
            wall_seconds=wall_seconds or s.chunk_timeout_seconds,
            cpu_seconds=s.chunk_cpu_seconds,
            memory_bytes=s.chunk_memory_mb * mb,
            processes=s.chunk_max_processes,
            file_bytes=s.chunk_max_file_mb * mb,
            disk_bytes=s.chunk_max_disk_mb * mb,
            files=s.chunk_max_files,
            open_files=s.chunk_max_open_files,
            log_bytes=s.chunk_log_bytes,
        )


@dataclass
class RunResult:
    ok: bool
    result: dict[str, Any] | None  # the runner's result.json, parsed (untrusted!)
    log: str
    # Why the parent stopped it: timeout | disk | files | canceled | None (it exited by itself).
    stopped: str | None
    returncode: int
    signal: int | None  # the signal that killed the runner, if one did


class OutputError(Exception):
    """The sandbox left something other than a plain, reasonably sized file where output goes."""


class _LogBuffer:
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


def _usage(root: Path, max_files: int) -> tuple[int, int]:
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


class Sandbox:
    """Runs ``python -m workers.scene_runner MODE`` for one spec in a fresh jail."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # One uid per worker process (each runs one jail at a time), so RLIMIT_NPROC, which
        # counts per uid, is one job's budget and not shared with a neighbour. Kept below 65536:
        # a pod in its own user namespace maps only that many.
        self.uid = settings.sandbox_uid_base + os.getpid() % 5000
        self.runner_dir = Path(__file__).resolve().parent

    def _binds(self) -> list[str]:
        args: list[str] = []
        ro = [
            "/usr",
            "/etc/fonts",
            "/etc/alternatives",
            "/etc/ld.so.cache",
            "/etc/texmf",
            "/var/lib/texmf",
            "/etc/ssl/certs",
        ]
        if not sys.base_prefix.startswith("/usr"):
            ro.append(sys.base_prefix)  # a Python built elsewhere (e.g. /opt/python)
        for path in ro:
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
        # The venv (or the image's Python prefix) at a fixed path, whatever the host path is.
        args += ["--ro-bind", sys.prefix, VENV_ROOT]
        for name in ("lib", "lib64", "bin", "sbin"):
            target = os.readlink(f"/{name}") if os.path.islink(f"/{name}") else None
            if target:
                args += ["--symlink", target, f"/{name}"]
            elif os.path.isdir(f"/{name}"):
                args += ["--ro-bind", f"/{name}", f"/{name}"]
        for module in RUNNER_MODULES:
            args += ["--ro-bind", str(self.runner_dir / module), f"{RUNNER_ROOT}/workers/{module}"]
        return args

    def _environment(self) -> dict[str, str]:
        # Everything the runner needs, and nothing from the worker's environment.
        return {
            "PATH": f"{VENV_ROOT}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": SANDBOX_ROOT,
            "PYTHONPATH": RUNNER_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONHASHSEED": "0",  # set iteration order must agree across a job's chunks
            "LANG": "C.UTF-8",
            "TEXMFVAR": f"{SANDBOX_ROOT}/.texmf-var",
            "MPLCONFIGDIR": "/tmp/mpl",
            "XDG_CACHE_HOME": "/tmp/cache",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYOPENGL_PLATFORM": "egl",
            "EGL_PLATFORM": "surfaceless",
        }

    @staticmethod
    def assets_dir(scratch: Path) -> Path:
        """The run's assets directory on the host (the worker fills it; the jail reads it)."""
        return scratch.with_name(scratch.name + ".assets")

    def command(self, mode: str, scratch: Path) -> list[str]:
        jailed = self.settings.sandbox != "none"
        python = str(Path(VENV_ROOT if jailed else sys.prefix) / "bin" / "python")
        root = SANDBOX_ROOT if jailed else str(scratch)
        runner = [
            python,
            "-m",
            "workers.scene_runner",
            mode,
            f"{root}/spec.json",
            f"{root}/result.json",
        ]
        if self.settings.sandbox == "none":
            return runner
        env_args: list[str] = []
        for name, value in self._environment().items():
            env_args += ["--setenv", name, value]
        return [
            "bwrap",
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--disable-userns",
            "--cap-drop",
            "ALL",
            *self._binds(),
            "--ro-bind",
            str(self.assets_dir(scratch)),
            ASSETS_ROOT,
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            *_gpu_devices(),
            "--size",
            str(256 * 1024 * 1024),
            "--tmpfs",
            "/tmp",
            "--bind",
            str(scratch),
            SANDBOX_ROOT,
            "--chdir",
            SANDBOX_ROOT,
            "--hostname",
            "render",
            *env_args,
            *runner,
        ]

    def _preexec(self, limits: Limits) -> Callable[[], None]:
        uid = self.uid

        def apply() -> None:
            for which, value in (
                (resource.RLIMIT_CPU, limits.cpu_seconds),
                (resource.RLIMIT_AS, limits.memory_bytes),
                (resource.RLIMIT_NPROC, limits.processes),
                (resource.RLIMIT_FSIZE, limits.file_bytes),
                (resource.RLIMIT_NOFILE, limits.open_files),
                (resource.RLIMIT_CORE, 0),
            ):
                resource.setrlimit(which, (value, value))
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        return apply

    def run(
        self,
        mode: str,
        spec: dict[str, Any],
        scratch: Path,
        limits: Limits,
        keep_going: Callable[[], bool] = lambda: True,
        heartbeat_seconds: float = 5.0,
    ) -> RunResult:
        """Run one spec in a cold jail at ``scratch`` (created fresh and empty here)."""
        self._prepare(scratch)
        self._write_spec(scratch, spec)
        proc = self._spawn(mode, scratch, limits, stdin=subprocess.DEVNULL)
        return self._collect(proc, scratch, limits, keep_going, heartbeat_seconds)

    def _prepare(self, scratch: Path) -> None:
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True, mode=0o700)
        # The jail's uid must traverse (not list) the parent to reach its bind source.
        os.chmod(scratch.parent, 0o711)
        (scratch / "out").mkdir()
        if os.getuid() == 0:
            for path in (scratch, scratch / "out"):
                os.chown(path, self.uid, self.uid)
        # Kept if the caller filled it already; the worker's, readable (not writable) by the jail.
        assets = self.assets_dir(scratch)
        assets.mkdir(mode=0o755, exist_ok=True)
        os.chmod(assets, 0o755)

    def _write_spec(self, scratch: Path, spec: dict[str, Any]) -> None:
        jailed = self.settings.sandbox != "none"
        root = SANDBOX_ROOT if jailed else str(scratch)
        place = {
            "out_dir": f"{root}/out",
            "assets_dir": ASSETS_ROOT if jailed else str(self.assets_dir(scratch)),
            "assets_missing": f"{root}/{MISSES_FILE}",
        }
        path = scratch / "spec.json"
        path.write_text(json.dumps({**spec, **place}))
        if os.getuid() == 0:
            os.chown(path, self.uid, self.uid)

    def _spawn(self, mode: str, scratch: Path, limits: Limits, stdin: int) -> Popen:
        argv = self.command(mode, scratch)
        env: dict[str, str] = {}
        cwd = None
        if self.settings.sandbox == "none":
            env = {
                **self._environment(),
                "HOME": str(scratch),
                "PYTHONPATH": str(self.runner_dir.parent),
                "TEXMFVAR": str(scratch / ".texmf-var"),
            }
            cwd = str(scratch)
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self._preexec(limits),
            start_new_session=True,
        )

    def _collect(
        self,
        proc: Popen,
        scratch: Path,
        limits: Limits,
        keep_going: Callable[[], bool],
        heartbeat_seconds: float,
        log: _LogBuffer | None = None,
    ) -> RunResult:
        log = log or _LogBuffer(limits.log_bytes)
        try:
            stopped = _watch(proc, log, scratch, limits, keep_going, heartbeat_seconds)
        finally:
            if proc.poll() is None:
                _kill(proc)
            returncode = proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        result = None
        if stopped is None:
            result = _read_result(scratch / "result.json")
        return RunResult(
            ok=stopped is None and returncode == 0 and bool(result and result.get("ok")),
            result=result,
            log=log.text(),
            stopped=stopped,
            returncode=returncode,
            signal=_signal_of(returncode, result),
        )


class WarmJail:
    """A jail started before its work arrives: Python and manim are already imported when the
    spec comes, which takes the ~1 s import off every chunk's critical path. Used once, like a
    cold jail: its own fresh scratch, its own namespaces; it holds nothing but the runner."""

    def __init__(self, sandbox: Sandbox, limits: Limits) -> None:
        self.sandbox = sandbox
        self.dir = Path(tempfile.mkdtemp(prefix="farm-jail-"))
        self.scratch = self.dir / "scratch"
        sandbox._prepare(self.scratch)
        self.assets = sandbox.assets_dir(self.scratch)  # fill before ``run``
        self.proc = sandbox._spawn("serve", self.scratch, limits, stdin=subprocess.PIPE)

    def ready(self) -> bool:
        return self.proc.poll() is None

    def run(
        self,
        mode: str,
        spec: dict[str, Any],
        limits: Limits,
        keep_going: Callable[[], bool] = lambda: True,
        heartbeat_seconds: float = 5.0,
    ) -> RunResult:
        """Hand the jail its one spec; the wall clock starts now."""
        self.sandbox._write_spec(self.scratch, spec)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{mode}\n".encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died while waiting: _collect reports how
        return self.sandbox._collect(self.proc, self.scratch, limits, keep_going, heartbeat_seconds)

    def close(self) -> None:
        if self.proc.poll() is None:
            _kill(self.proc)
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Jails:
    """Hands out single-use jails, keeping the next one warm while the worker is idle."""

    def __init__(self, sandbox: Sandbox, limits: Limits, warm: bool) -> None:
        self.sandbox, self.limits, self.warm = sandbox, limits, warm
        self._next: WarmJail | None = None

    def start(self) -> None:
        """Warm the next jail (no-op when warming is off or one is waiting)."""
        if self.warm and (self._next is None or not self._next.ready()):
            if self._next is not None:
                self._next.close()
            self._next = WarmJail(self.sandbox, self.limits)

    @contextmanager
    def take(self) -> Iterator[WarmJail]:
        jail, self._next = self._next, None
        if jail is None or not jail.ready():  # none waiting, or it died while it waited
            if jail is not None:
                jail.close()
            jail = WarmJail(self.sandbox, self.limits)
        try:
            yield jail
        finally:
            jail.close()
            self.start()  # warm the next while this worker uploads and waits for work


GPU_DEVICES = (
    "/dev/dri",
    "/dev/nvidiactl",
    "/dev/nvidia-modeset",
    "/dev/nvidia-uvm",
    "/dev/nvidia0",
)


def _gpu_devices() -> list[str]:
    """Device binds the OpenGL pool needs for EGL (Mesa render nodes, NVIDIA's devices)."""
    args: list[str] = []
    for path in GPU_DEVICES:
        args += ["--dev-bind-try", path, path]
    return args


def _signal_of(returncode: int, result: dict[str, Any] | None) -> int | None:
    if returncode < 0:
        return -returncode
    # bwrap reports a child killed by a signal as 128 + signal.
    if returncode > 128 and result is None:
        return returncode - 128
    return None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # The runner is pid 1 of its namespace under bwrap's --die-with-parent: killing the group
    # takes every process the scene started with it, daemons included.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _watch(
    proc: subprocess.Popen[bytes],
    log: _LogBuffer,
    scratch: Path,
    limits: Limits,
    keep_going: Callable[[], bool],
    heartbeat_seconds: float,
) -> str | None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    started = time.monotonic()
    next_check = started + 0.5
    next_beat = started + heartbeat_seconds
    stopped: str | None = None
    open_pipe = True
    while True:
        if open_pipe:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    data = b""
                if data:
                    log.add(data)
                else:
                    open_pipe = False
        else:
            time.sleep(0.1)
        if proc.poll() is not None and not open_pipe:
            return stopped
        if proc.poll() is not None:
            # The runner is gone; drain what is left without waiting on grandchildren forever.
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
            used, files = _usage(scratch, limits.files)
            if used > limits.disk_bytes:
                stopped = "disk"
            elif files > limits.files:
                stopped = "files"
        if not stopped and now >= next_beat:
            next_beat = now + heartbeat_seconds
            if not keep_going():
                stopped = "canceled"
        if stopped:
            _kill(proc)


def _drain(fd: int, log: _LogBuffer) -> bool:
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


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        raw = read_output(path, 1024 * 1024)
        value = json.loads(raw)
    except (OutputError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def checked_output(scratch: Path, relative: str, max_bytes: int) -> Path:
    """Resolve a path the sandbox reported, accepting only a regular file inside its out dir."""
    out = (scratch / "out").resolve()
    candidate = Path(relative)
    if candidate.is_absolute():
        candidate = Path(*candidate.parts[1:])  # the jail's /work/out/x -> out/x
        if candidate.parts[:1] == (SANDBOX_ROOT.strip("/"),):
            candidate = Path(*candidate.parts[1:])
    path = scratch / candidate
    if ".." in candidate.parts or not str(path).startswith(str(out) + os.sep):
        raise OutputError(f"output path {relative!r} is outside the output directory")
    _check_regular(path, max_bytes)
    return path


def _check_regular(path: Path, max_bytes: int) -> os.stat_result:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise OutputError(f"the render produced no {path.name}") from None
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{path.name} is not a regular file (symlink, FIFO or device)")
    if info.st_size > max_bytes:
        raise OutputError(f"{path.name} is larger than {max_bytes} bytes")
    return info


def read_output(path: Path, max_bytes: int) -> bytes:
    """Read a file the sandbox wrote without following links or blocking on a FIFO."""
    _check_regular(path, max_bytes)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(max_bytes + 1)[:max_bytes]


def copy_output(path: Path, dest: Path, max_bytes: int) -> None:
    """Copy a checked output out of the scratch dir (no links followed, size capped)."""
    _check_regular(path, max_bytes)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as src, open(dest, "wb") as dst:
        copied = 0
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > max_bytes:
                raise OutputError(f"{path.name} is larger than {max_bytes} bytes")
            dst.write(chunk)
