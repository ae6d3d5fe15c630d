"""The bubblewrap command line of a jail: what it binds, what it mounts, what it runs.

What the jail holds: read-only binds of the system (/usr), Python, the venv, TeX, fonts, and the
jail's program (``workers/jail/program``, nothing else of the project); a fresh, empty scratch
directory as ``/work``; /tmp and /dev/shm as tmpfs mounts of a fixed size; a read-only root.
What it lacks: the worker's environment (bwrap starts with an empty one, because ``--clearenv``
still leaves the parent's environment readable at /proc/1/environ), config files, credentials,
other jobs' files and processes, and any network (own network namespace).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from workers.jail.limits import Limits

SANDBOX_ROOT = "/work"
ASSETS_ROOT = "/assets"  # the job's fetched assets, read-only (jail/program/assets_shim.py)
RUNNER_ROOT = "/opt/farm-runner"
VENV_ROOT = "/opt/farm-venv"
PROGRAM_DIR = Path(__file__).resolve().parent / "program"
# Inside the jail the program is the package workers.jail.program (its parents are namespace
# packages there: only this one directory is bound).
PROGRAM_PACKAGE = "workers.jail.program"
PROGRAMS = ("runner", "media")
# The descriptor the program writes one byte to as it starts (see Jail._started).
READY_FD_ENV = "JAIL_READY_FD"

# GPU devices a pod may be given (all of them: a pod given GPU 3 has /dev/nvidia3), MIG
# capability nodes, and Mesa's render nodes.
GPU_DEVICE_PATTERNS = (
    "/dev/nvidia[0-9]*",
    "/dev/nvidiactl",
    "/dev/nvidia-uvm*",
    "/dev/nvidia-modeset",
    "/dev/nvidia-caps",
    "/dev/dri",
)


def gpu_devices() -> list[str]:
    """Every GPU device node this host (pod) has, for the OpenGL renderer's EGL."""
    found: list[str] = []
    for pattern in GPU_DEVICE_PATTERNS:
        found += sorted(glob.glob(pattern))
    return found


def environment() -> dict[str, str]:
    """Everything the program needs, and nothing from the worker's environment."""
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


def _proc(mode: str, gpu: bool) -> list[str]:
    """A fresh procfs, or (``none``) an empty /proc with only NVIDIA's driver info bound."""
    if mode == "fresh":
        return ["--proc", "/proc"]
    args = ["--dir", "/proc"]
    if gpu:
        args += ["--ro-bind-try", "/proc/driver/nvidia", "/proc/driver/nvidia"]
    return args


def _binds(gpu: bool, proc: str = "fresh") -> list[str]:
    args: list[str] = []
    ro = [
        "/usr",
        "/etc/fonts",
        # fontconfig's system cache: without it every jail's first Text() scans the fonts
        # again (0.14 s in a jail against 0.03 s with it).
        "/var/cache/fontconfig",
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
    args += ["--ro-bind", str(PROGRAM_DIR), f"{RUNNER_ROOT}/{PROGRAM_PACKAGE.replace('.', '/')}"]
    args += [*_proc(proc, gpu), "--dev", "/dev"]
    if gpu:
        for device in gpu_devices():
            args += ["--dev-bind-try", device, device]
    return args


def program_argv(program: str, mode: str, root: str, python: str) -> list[str]:
    """``python -m workers.jail.program.<program> MODE SPEC RESULT`` with the fixed file names."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown jail program {program!r}")
    return [
        python,
        "-m",
        f"{PROGRAM_PACKAGE}.{program}",
        mode,
        f"{root}/spec.json",
        f"{root}/result.json",
    ]


def command(
    program: str,
    mode: str,
    scratch: Path,
    limits: Limits,
    *,
    jailed: bool,
    gpu: bool,
    assets: Path | None = None,
    proc: str = "fresh",
) -> list[str]:
    """The argv that runs ``program`` for ``scratch``: in bwrap, or bare when ``jailed`` is off."""
    if not jailed:
        return program_argv(program, mode, str(scratch), str(Path(sys.prefix) / "bin" / "python"))
    env_args: list[str] = []
    for name, value in environment().items():
        env_args += ["--setenv", name, value]
    tmpfs = str(limits.tmpfs_bytes)
    return [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        *_binds(gpu, proc),
        *(["--ro-bind", str(assets), ASSETS_ROOT] if assets is not None else []),
        "--size",
        tmpfs,
        "--tmpfs",
        "/tmp",
        "--size",
        tmpfs,
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        "--bind",
        str(scratch),
        SANDBOX_ROOT,
        # Nothing else is writable: the root bwrap builds (a tmpfs) becomes read-only.
        "--remount-ro",
        "/",
        "--chdir",
        SANDBOX_ROOT,
        "--hostname",
        "render",
        *env_args,
        *program_argv(program, mode, SANDBOX_ROOT, f"{VENV_ROOT}/bin/python"),
    ]


def bare_environment(scratch: Path) -> dict[str, str]:
    """FARM_SANDBOX=none (no isolation at all): the program runs as a plain child."""
    return {
        **environment(),
        "HOME": str(scratch),
        "PYTHONPATH": str(PROGRAM_DIR.parents[2]),
        "TEXMFVAR": str(scratch / ".texmf-var"),
    }
