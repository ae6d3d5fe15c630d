"""The one failure classifier: every way a step can end, as a typed outcome.

Every run of a jail and every exception a step raises goes through here (``of_run``,
``of_exception``), and the lifecycle acts on the outcome alone:

* ``Done``: the step recorded its result (or found nothing left to do).
* ``SceneFault``: the scene caused it (its error, crash, self-kill, a limit, OOM inside its
  cgroup, output or media the farm refuses). The job fails; charged for the time used; never
  retried.
* ``PlatformFault``: the farm's own trouble, with evidence (the jail never started, storage or
  the database failed, a bug). The step is released and retried up to ``FARM_MAX_ATTEMPTS``;
  not charged. Its message is the farm's words, never text read from the jail or the host.
* ``Stopped``: the job was canceled or this attempt lost its lease: nothing to record.

Anything that comes out of the jail is the scene's (it could be forged), so nothing the jail
reports can make a failure look like the platform's; only the jail's own start-up status can.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace

from farm import assets
from workers.jail.jail import RunResult
from workers.jail.limits import MB, Limits
from workers.jail.outputs import OutputError
from workers.media.check import Canceled, MediaError


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class SceneFault:
    error: str
    kind: str = "scene_error"  # or "timeout"
    log_key: str | None = None  # the failing attempt's log, shown if this attempt ends the job


@dataclass(frozen=True)
class PlatformFault:
    error: str
    log_key: str | None = None


@dataclass(frozen=True)
class Stopped:
    reason: str


Outcome = Done | SceneFault | PlatformFault | Stopped

_TAIL_LINES = 3


def with_log(outcome: Outcome, log_key: str) -> Outcome:
    """The same outcome, carrying the attempt's log object."""
    if isinstance(outcome, SceneFault | PlatformFault):
        return replace(outcome, log_key=log_key)
    return outcome


def limit_message(limit: str, limits: Limits) -> str:
    """The tenant-facing sentence for a per-job limit the scene hit."""
    if limit == "memory":
        return (
            f"the scene used more than its memory limit ({limits.memory_bytes // MB} MB for all "
            "its processes and its /tmp and /dev/shm files together)"
        )
    if limit == "processes":
        return f"the scene tried to run more than its process limit ({limits.processes})"
    if limit == "disk":
        return (
            f"the scene wrote more than its disk limit ({limits.disk_bytes // MB} MB, "
            f"/tmp and /dev/shm included, {limits.tmpfs_bytes // MB} MB each)"
        )
    if limit == "files":
        return f"the scene created more than its file limit ({limits.files} files)"
    return f"the scene hit its {limit} limit"


def of_run(run: RunResult, limits: Limits) -> Outcome | None:
    """What a finished jail run means; None when it succeeded."""
    if run.ok:
        return None
    if run.stopped == "canceled":
        return Stopped("job canceled or lease lost")
    if run.stopped == "timeout":
        wall = run.wall_seconds or limits.wall_seconds
        return SceneFault(f"render timed out after {wall:g} s", "timeout")
    if run.stopped in ("disk", "files"):
        return SceneFault(limit_message(run.stopped, limits))
    if not run.started:
        return PlatformFault("the render jail failed to start")
    if run.limit is not None:
        return SceneFault(limit_message(run.limit, limits))
    report = run.report
    if report is not None and report.get("ok") is False:
        error = report.get("error")
        text = str(error)[:16384] if isinstance(error, str) else "the scene failed"
        if "[Errno 28]" in text:
            return SceneFault(limit_message("disk", limits))
        if text.startswith("MemoryError") or "\nMemoryError" in text:
            return SceneFault(limit_message("memory", limits) + f": {text}")
        return SceneFault(text)
    if run.signal is not None:
        try:
            name = signal.Signals(run.signal).name
        except ValueError:
            name = f"signal {run.signal}"
        return SceneFault(f"the render process was killed ({name})")
    if run.report_problem and report is None and run.returncode == 0:
        return SceneFault(run.report_problem)
    tail = run.log.strip().splitlines()[-_TAIL_LINES:]
    detail = ("; last output: " + " | ".join(tail)) if tail else ""
    return SceneFault(
        f"the scene exited before rendering finished (exit code {run.returncode})" + detail
    )


def of_exception(exc: BaseException) -> Outcome:
    """An exception a step raised: refused output is the scene's, anything else the farm's."""
    if isinstance(exc, OutputError | MediaError | assets.AssetError):
        return SceneFault(str(exc))
    if isinstance(exc, Canceled | assets.Interrupted):
        return Stopped("job canceled or lease lost")
    return PlatformFault(f"platform error ({type(exc).__name__})")
