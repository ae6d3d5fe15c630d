"""What comes out of a jail, read as hostile: files by the farm's names, and the program's report.

Files: the worker names every output (``out/video.mp4``, ``result.json``, ...); nothing the scene
writes names a path. Each is opened after the jail is dead, relative to a descriptor of the
jail's scratch directory, with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` (or, where the
kernel lacks it, a walk that opens each component with ``O_NOFOLLOW``), so a symlink anywhere in
the path (``out -> /``) is refused, not followed; then only a regular file with one link, under
its size cap, is read.

Reports: strict schemas with bounds (``parse_report``); anything else is ``OutputError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# openat2(2): x86_64 and every architecture on the generic syscall table use 437.
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
REPORT_BYTES = 4 * 1024 * 1024
MAX_ANIMATIONS = 100_000
MAX_ERROR_CHARS = 16 * 1024


class OutputError(Exception):
    """The jail left something other than a plain, reasonably sized file or a valid report.

    Its message is the farm's own words (never bytes read from the jail): fit for tenants."""


class Missing(OutputError):
    """Nothing at all at the name (not even a link)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None


def _openat2(dirfd: int, name: str, flags: int) -> int:
    how = _OpenHow(flags, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, dirfd, name.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    return int(fd)


def _walk(dirfd: int, name: str, flags: int) -> int:
    """The same guarantee without openat2: each component opened with O_NOFOLLOW."""
    parts = name.split("/")
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def open_beneath(dirfd: int, name: str, flags: int = os.O_RDONLY) -> int:
    """Open ``name`` under ``dirfd``, refusing every symlink, ``..`` and absolute path."""
    global _openat2_works
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OutputError(f"bad output name {name!r}")  # the farm's own names never are
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if not flags & os.O_PATH:
        flags |= os.O_NONBLOCK | os.O_NOCTTY  # a FIFO must not block the worker
    if _openat2_works is not False:
        try:
            fd = _openat2(dirfd, name, flags)
            _openat2_works = True
            return fd
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM) or _openat2_works:
                raise
            _openat2_works = False  # no openat2 here (old kernel, seccomp): walk instead
    return _walk(dirfd, name, flags)


@contextlib.contextmanager
def directory(path: Path) -> Iterator[int]:
    """A descriptor of a jail's scratch directory (the farm made it; not a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_regular(dirfd: int, name: str, max_bytes: int, what: str) -> tuple[int, int]:
    try:
        fd = open_beneath(dirfd, name)
    except FileNotFoundError:
        raise Missing(f"the render produced no {what}") from None
    except OSError:
        raise OutputError(
            f"the {what} is not a plain file (a link or a path through one)"
        ) from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"the {what} is not a regular file (FIFO, device or directory)"
    elif info.st_nlink != 1:
        problem = f"the {what} is a hard link"
    elif info.st_size > max_bytes:
        problem = f"the {what} is larger than {max_bytes} bytes"
    if problem:
        os.close(fd)
        raise OutputError(problem)
    return fd, info.st_size


def read_output(dirfd: int, name: str, max_bytes: int, what: str = "output") -> bytes:
    """The bytes of a regular file ``name`` under ``dirfd``, at most ``max_bytes``."""
    fd, _ = _open_regular(dirfd, name, max_bytes, what)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OutputError(f"the {what} is larger than {max_bytes} bytes")
    return data


def copy_output(
    dirfd: int, name: str, dest: Path, max_bytes: int, what: str = "output"
) -> int | None:
    """Copy a regular file ``name`` under ``dirfd`` to ``dest`` (size-capped); bytes copied, or
    None when nothing is at ``name`` (a link or anything else there is OutputError)."""
    try:
        fd, _ = _open_regular(dirfd, name, max_bytes, what)
    except Missing:
        return None
    copied = 0
    with os.fdopen(fd, "rb") as src, open(dest, "wb") as dst:
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > max_bytes:
                raise OutputError(f"the {what} is larger than {max_bytes} bytes")
            dst.write(chunk)
    return copied


# --- reports ----------------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def load_report(raw: bytes) -> dict[str, Any]:
    """JSON object, with NaN/Infinity refused (Python's json accepts them by default)."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError):
        raise OutputError("the render left an unreadable report") from None
    if not isinstance(value, dict):
        raise OutputError("the render left an unreadable report")
    return value


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OutputError("the render's report has a value out of bounds")
    return value


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutputError("the render's report has a value out of bounds")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise OutputError("the render's report has a value out of bounds")
    return number


def _keys(report: dict[str, Any], allowed: set[str]) -> None:
    if not set(report) <= allowed:
        raise OutputError("the render's report has unknown fields")


def parse_failure(report: dict[str, Any]) -> dict[str, Any]:
    """``{"ok": false, "error": str, "scene_error": bool}``, the error text capped."""
    _keys(report, {"ok", "error", "scene_error"})
    error, scene = report.get("error"), report.get("scene_error")
    if not isinstance(error, str) or not isinstance(scene, bool):
        raise OutputError("the render left an unreadable report")
    return {"ok": False, "error": error[:MAX_ERROR_CHARS], "scene_error": scene}


def parse_plan(report: dict[str, Any], max_seconds: float) -> list[float]:
    """The plan's durations: finite, non-negative, each and all within ``max_seconds``."""
    durations: list[float] = parse_plan_full(report, max_seconds)["durations"]
    return durations


MAX_SOUNDS = 1000
_HASH = re.compile(r"[0-9a-f]{64}")


def _hash(value: Any) -> str | None:
    """A play's manim hash (64 hex) or None. Computed in the jail, so only ever a cache key
    within the owner's own scope: a forged one can mislead nobody but the scene's owner."""
    if value is None:
        return None
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise OutputError("the render's report has a malformed play hash")
    return value


def _sounds(value: Any, max_seconds: float) -> list[tuple[float, float | None]]:
    """[time, gain_to_background] pairs; sound i's file is ``sound-{i:04d}.wav``."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_SOUNDS:
        raise OutputError(f"the report lists more than {MAX_SOUNDS} sounds")
    sounds = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise OutputError("the render left an unreadable report")
        time = _number(item[0], 0.0, max_seconds)
        gain = None if item[1] is None else _number(item[1], -200.0, 200.0)
        sounds.append((time, gain))
    return sounds


# What a render reports of what it drew (and a plan that renders while it plans, too).
_DRAWN_KEYS = {"frames", "animations", "video", "captions", "plays"}


def parse_plan_full(
    report: dict[str, Any], max_seconds: float, fps: int | None = None
) -> dict[str, Any]:
    """``{"durations", "hashes", "sounds", "captions", "drawn", "drawing_seconds"}``: durations
    finite, non-negative, each and all within ``max_seconds``; one hash (or None) per play; sounds
    within the scene. ``drawn``: what a plan that renders while it plans (``fps`` given) drew,
    as ``parse_render`` reads it, each drawn play with exactly its planned frames and hash;
    None for a plan that drew nothing."""
    _keys(report, {"ok", "durations", "hashes", "sounds", "drawing_seconds", *_DRAWN_KEYS})
    durations = report.get("durations")
    if not isinstance(durations, list) or len(durations) > MAX_ANIMATIONS:
        raise OutputError(f"the plan's report is not a list of at most {MAX_ANIMATIONS} durations")
    values = [_number(d, 0.0, max_seconds) for d in durations]
    hashes = report.get("hashes", [None] * len(values))
    if not isinstance(hashes, list) or len(hashes) != len(values):
        raise OutputError("the plan's report has not one hash per animation")
    captions = report.get("captions", False)
    if not isinstance(captions, bool):
        raise OutputError("the render left an unreadable report")
    parsed_hashes = [_hash(h) for h in hashes]
    drawn = None
    if set(report) & (_DRAWN_KEYS - {"captions"}):  # a plan that says it drew something
        if fps is None:
            raise OutputError("the plan drew animations it was not asked to draw")
        frames = [round(v * fps) for v in values]
        drawn = _drawn(report, sum(frames))
        for index, n, play_hash in drawn["plays"]:
            if index >= len(values) or n != frames[index] or play_hash != parsed_hashes[index]:
                raise OutputError(f"the plan's movie of animation {index} is not the one planned")
        if sum(n for _, n, _ in drawn["plays"]) != drawn["frames"]:
            raise OutputError("the plan's report does not add up")
    return {
        "durations": values,
        "hashes": parsed_hashes,
        "sounds": _sounds(report.get("sounds"), max_seconds),
        "captions": captions,
        "drawn": drawn,
        # A hint for chunk balance only (the plan's time less this is its simulation cost).
        "drawing_seconds": _number(report.get("drawing_seconds", 0.0), 0.0, 10.0 * 24 * 3600),
    }


def parse_render(report: dict[str, Any], max_frames: int) -> dict[str, Any]:
    """``{"ok", "frames", "animations", "video", "captions", "plays"}`` with bounded counts;
    ``plays``: (index, frames, hash) of each play movie (``play-{index:04d}.mp4``)."""
    _keys(report, {"ok", "sounds", *_DRAWN_KEYS})
    if report.get("sounds"):
        raise OutputError("a range reported sounds; the farm takes them from the plan")
    return _drawn(report, max_frames)


def _drawn(report: dict[str, Any], max_frames: int) -> dict[str, Any]:
    video, captions = report.get("video"), report.get("captions")
    if not isinstance(video, bool) or not isinstance(captions, bool):
        raise OutputError("the render left an unreadable report")
    frames = _int(report.get("frames"), 0, 2**31)
    if frames > max_frames:
        raise OutputError(
            f"the chunk rendered {frames} frames where its plan had {max_frames}"
            " (the scene is longer when drawn than when planned)"
        )
    plays_raw = report.get("plays") or []
    if not isinstance(plays_raw, list) or len(plays_raw) > MAX_ANIMATIONS:
        raise OutputError("the render left an unreadable report")
    plays = []
    for item in plays_raw:
        if not isinstance(item, list) or len(item) != 3:
            raise OutputError("the render left an unreadable report")
        plays.append(
            (_int(item[0], 0, MAX_ANIMATIONS), _int(item[1], 0, max_frames), _hash(item[2]))
        )
    if any(a[0] >= b[0] for a, b in itertools.pairwise(plays)):
        raise OutputError("the render left an unreadable report")  # each play once, in order
    return {
        "frames": frames,
        "animations": _int(report.get("animations"), 0, MAX_ANIMATIONS),
        "video": video,
        "captions": captions,
        "plays": plays,
    }
