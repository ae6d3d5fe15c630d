"""The jail: one single-use bubblewrap sandbox running one program for one spec.

Every plan, chunk and media step runs in a ``Jail``; the pool (pool.py) hands the render ones
out already started, so Python and manim are imported before the spec arrives. A jail has its
own directory ``farm-jail-<worker pid>-*`` (the scratch the jail sees as /work, and a host-only
side the jail cannot reach), its own cgroup where the host allows one, its own uid per worker
process (RLIMIT_NPROC counts per uid), its own namespaces. Its outputs are read only after
every process in it is dead; ``close`` removes all of it, and a starting worker sweeps what a
crashed one left behind (``sweep_stale``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import cpus
from farm.assets import MISSES_FILE
from farm.config import Settings
from workers.jail import bwrap, cgroup, handoff, outputs, watchdog
from workers.jail.limits import Limits

log = logging.getLogger("farm.jail")

PREFIX = "farm-jail-"
# In a render jail's host-only side while its program runs: what this host's render jails are
# doing now, for a plan choosing its encoders (``running_render_jails``).
RUNNING = "running"


@dataclass
class RunResult:
    ok: bool  # exited 0, untouched by the watchdog, with a report that says ok
    report: dict[str, Any] | None  # the program's report, parsed as JSON only (untrusted!)
    log: str
    # Why the watchdog stopped it: timeout | disk | files | canceled | None (it exited).
    stopped: str | None
    # A cgroup limit the kernel enforced during the run: memory | processes | None.
    limit: str | None
    returncode: int
    signal: int | None  # the signal that killed the program, if one did
    report_problem: str | None = None  # why a report could not be read (the farm's words)
    wall_seconds: float = 0.0  # the wall clock this run had
    # Whether the jail was set up and its program started (it wrote to its ready pipe before
    # any scene code ran): a failure without it is the platform's, and a scene cannot forge
    # its absence.
    started: bool = True


class Jail:
    """One program in one fresh jail. ``warm``: started now, waiting for its mode on stdin."""

    def __init__(
        self,
        settings: Settings,
        limits: Limits,
        program: str = "runner",
        *,
        warm: bool = False,
        gpu: bool | None = None,
    ) -> None:
        self.settings, self.limits, self.program = settings, limits, program
        self.jailed = settings.sandbox != "none"
        self.gpu = program == "runner" if gpu is None else gpu
        # One uid per worker process (each runs one render jail at a time), so RLIMIT_NPROC,
        # which counts per uid, is one job's budget. Below 65536: a pod's user namespace maps
        # only that many.
        self.uid = settings.sandbox_uid_base + os.getpid() % 5000
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self.scratch = self.dir / "scratch"
        self.host = self.dir / "host"  # the worker's own copies; the jail never sees them
        # The job's fetched assets (the worker fills it before ``run``; read-only to the jail).
        self.assets = self.dir / "assets"
        self.cgroup: cgroup.JobCgroup | None = None
        self.proc: watchdog.Popen | None = None
        self._ready_fd: int | None = None
        self._handoff: handoff.Channel | None = None
        try:
            self._prepare()
            if self.jailed:
                self.cgroup = cgroup.JobCgroup.create(
                    self.dir.name, limits.memory_bytes, limits.processes
                )
            if warm:
                self.proc = self._spawn("serve", stdin=subprocess.PIPE)
        except BaseException:
            self.close()
            raise

    # --- set-up ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        # The jail's uid must traverse (not list) the jail's directory to reach its bind source.
        os.chmod(self.dir, 0o711)
        self.host.mkdir(mode=0o700)
        self.assets.mkdir(mode=0o755)
        for path in (self.scratch, self.scratch / "out", self.scratch / "in"):
            path.mkdir(mode=0o700)
            if os.getuid() == 0:
                os.chown(path, self.uid, self.uid)

    def put(self, name: str, source: Path) -> str:
        """Copy a host file into the jail's ``in/`` (read-only to it); returns its jail path."""
        dest = self.scratch / "in" / name
        shutil.copyfile(source, dest)
        os.chmod(dest, 0o444)
        return self._jail_path(f"in/{name}")

    def _jail_path(self, relative: str) -> str:
        return f"{bwrap.SANDBOX_ROOT if self.jailed else self.scratch}/{relative}"

    def _write_spec(self, spec: dict[str, Any]) -> None:
        path = self.scratch / "spec.json"
        place = {"out_dir": self._jail_path("out")}
        if self.program == "runner":
            place["assets_dir"] = bwrap.ASSETS_ROOT if self.jailed else str(self.assets)
            place["assets_missing"] = self._jail_path(MISSES_FILE)
        path.write_text(json.dumps({**spec, **place}))
        os.chmod(path, 0o444)

    def _preexec(self) -> Callable[[], None]:
        limits, uid = self.limits, self.uid
        enter = self.cgroup.enter_files() if self.cgroup else []

        def apply() -> None:
            for path in enter:  # join the jail's cgroup before anything of it runs
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            rlimits = [
                (resource.RLIMIT_CPU, limits.cpu_seconds),
                (resource.RLIMIT_NPROC, limits.processes),
                (resource.RLIMIT_FSIZE, limits.file_bytes),
                (resource.RLIMIT_NOFILE, limits.open_files),
                (resource.RLIMIT_CORE, 0),
            ]
            if limits.address_space and not enter:
                # Without a cgroup, memory is held per process only (RLIMIT_AS); with one, the
                # cgroup holds the whole jail and address space (which EGL reserves in bulk
                # and Python over-reserves) is left alone.
                rlimits.append((resource.RLIMIT_AS, limits.memory_bytes))
            for which, value in rlimits:
                resource.setrlimit(which, (value, value))
            if limits.niceness:
                os.setpriority(os.PRIO_PROCESS, 0, limits.niceness)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        return apply

    def _spawn(self, mode: str, stdin: int) -> watchdog.Popen:
        argv = bwrap.command(
            self.program,
            mode,
            self.scratch,
            self.limits,
            jailed=self.jailed,
            gpu=self.gpu,
            assets=self.assets if self.program == "runner" else None,
            proc=self.settings.jail_proc,
        )
        env: dict[str, str] = {}
        cwd = None
        # The program writes one byte here before anything else (before any scene code): the
        # evidence, which the scene cannot take back, that the jail was set up and ran it.
        self._ready_fd, write_end = os.pipe()
        os.set_blocking(self._ready_fd, False)
        pass_fds: tuple[int, ...] = (write_end,)
        names = {bwrap.READY_FD_ENV: str(write_end)}
        if self.program == "runner":  # a plan may hand off while it runs (handoff.py)
            self._handoff = handoff.Channel()
            pass_fds += self._handoff.program_fds()
            names[handoff.ENV] = ",".join(str(fd) for fd in self._handoff.program_fds())
        if self.jailed:
            setenv = [arg for name, value in names.items() for arg in ("--setenv", name, value)]
            argv = [argv[0], *setenv, *argv[1:]]
        else:
            env, cwd = bwrap.bare_environment(self.scratch), str(self.scratch)
            env.update(names)
        try:
            return subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=self._preexec(),
                start_new_session=True,
                pass_fds=pass_fds,
            )
        finally:
            os.close(write_end)
            if self._handoff is not None:
                self._handoff.spawned()

    def _started(self) -> bool:
        if self._ready_fd is None:
            return False
        try:
            data = os.read(self._ready_fd, 16)
        except OSError:
            data = b""
        os.close(self._ready_fd)
        self._ready_fd = None
        return bool(data)

    # --- running ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """A warm jail still waiting for its spec (it may die while the worker idles)."""
        return self.proc is not None and self.proc.poll() is None

    def run(
        self,
        mode: str,
        spec: dict[str, Any],
        keep_going: Callable[[], bool] = lambda: True,
        heartbeat_seconds: float = 5.0,
        wall_seconds: float | None = None,
        on_plan: handoff.OnPlan | None = None,
        on_claim: handoff.OnClaim | None = None,
    ) -> RunResult:
        """Hand the jail its one spec and watch it to the end; the wall clock starts now.
        ``on_plan``: what to do with a plan the program hands off while it runs; ``on_claim``:
        whether a plan pass draws the play it reached (handoff.py)."""
        limits = (
            self.limits if wall_seconds is None else self.limits.with_(wall_seconds=wall_seconds)
        )
        self._write_spec(spec)
        running = self.host / RUNNING
        if self.program == "runner":
            running.touch()
        if self.proc is None:
            self.proc = self._spawn(mode, stdin=subprocess.DEVNULL)
        else:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(f"{mode}\n".encode())
                self.proc.stdin.close()
            except BrokenPipeError:
                pass  # it died while waiting: the result says how
        proc = self.proc
        channel = self._handoff
        if channel is not None and on_plan is None and on_claim is None:
            channel.close()  # nobody to answer: a program that asks finishes as a plain plan
            channel = None
        elif channel is not None:
            channel.on_plan, channel.on_claim = on_plan, on_claim
            channel.encoders = lambda: render_encoders(self.settings)
        log_buffer = watchdog.LogBuffer(limits.log_bytes)
        try:
            stopped = watchdog.watch(
                proc,
                log_buffer,
                self.scratch,
                limits,
                keep_going,
                heartbeat_seconds,
                self.kill,
                channel,
            )
        finally:
            if proc.poll() is None:
                self.kill()
            returncode = proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        self._make_sure_dead()
        running.unlink(missing_ok=True)
        limit = self.cgroup.limit_hit() if self.cgroup else None
        report, problem = None, None
        if stopped is None:
            report, problem = self._read_report()
        return RunResult(
            started=self._started(),
            # A limit the kernel enforced fails the run even if the scene carried on after it
            # (the OOM killer may have taken only one of its children).
            ok=stopped is None
            and limit is None
            and returncode == 0
            and bool(report and report.get("ok") is True),
            report=report,
            log=log_buffer.text(),
            stopped=stopped,
            limit=limit,
            returncode=returncode,
            signal=_signal_of(returncode, report),
            report_problem=problem,
            wall_seconds=limits.wall_seconds,
        )

    def kill(self) -> None:
        if self.proc is not None:
            watchdog.kill_group(self.proc)
        if self.cgroup is not None:
            self.cgroup.kill()

    def _make_sure_dead(self) -> None:
        """Outputs are read only once nothing in the jail can still change them."""
        if self.cgroup is not None and not self.cgroup.empty():
            self.cgroup.kill()
            if not self.cgroup.empty():
                raise RuntimeError("the jail's processes did not die")

    def _read_report(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with outputs.directory(self.scratch) as fd:
                raw = outputs.read_output(fd, "result.json", outputs.REPORT_BYTES, "report")
            return outputs.load_report(raw), None
        except outputs.Missing:
            return None, None
        except outputs.OutputError as exc:
            return None, str(exc)

    def copy_out(self, name: str, max_bytes: int, what: str) -> Path | None:
        """Copy ``out/<name>`` to the host-only side (after the run); None when absent."""
        dest = self.host / name
        with outputs.directory(self.scratch) as fd:
            copied = outputs.copy_output(fd, f"out/{name}", dest, max_bytes, what)
        return None if copied is None else dest

    def close(self) -> None:
        """Kill whatever is left, remove the cgroup and every file of the jail."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.kill()
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()
        if self.cgroup is not None:
            self.cgroup.destroy()
            self.cgroup = None
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        if self._handoff is not None:
            self._handoff.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _signal_of(returncode: int, report: dict[str, Any] | None) -> int | None:
    if returncode < 0:
        return -returncode
    # bwrap reports a child killed by a signal as 128 + signal.
    if returncode > 128 and report is None:
        return returncode - 128
    return None


def render_encoders(settings: Settings, *, starting: bool = False) -> int:
    """How many movies a render jail may encode at once: the node's CPUs shared by the render
    jails running on it (with ``starting``, one about to run besides), at least
    ``max_inflight_encoders``."""
    share = cpus.inflight_encoders(slots=max(1, running_render_jails() + starting))
    return max(settings.max_inflight_encoders, share)


def running_render_jails(root: Path | None = None) -> int:
    """Render jails of this host (every worker process on it) running a plan or chunk now."""
    base = Path(root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        return sum(1 for _ in base.glob(f"{PREFIX}*/host/{RUNNING}"))
    return 0


def sweep_stale(root: Path | None = None) -> int:
    """Remove jail directories and cgroups whose worker process is gone; how many dirs."""
    base = Path(root or tempfile.gettempdir())
    removed = 0
    with contextlib.suppress(OSError):
        for path in base.glob(PREFIX + "*"):
            if path.is_dir() and not path.is_symlink() and not cgroup.owner_alive(path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    with contextlib.suppress(OSError):
        cgroup.sweep_stale()
    return removed
