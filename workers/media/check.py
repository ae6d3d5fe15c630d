"""Prove a chunk is a plain MP4 of the expected geometry, and parse its captions, in a jail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from farm.captions import Cue
from farm.config import Settings
from workers.jail import outputs
from workers.jail.jail import Jail, RunResult
from workers.jail.limits import Limits

MAX_CUES = 100_000
MAX_CUE_TEXT = 4096
# The farm's words for each problem code the media program may report.
PROBLEMS = {
    "not_mp4": "is not a plain MP4 video",
    "streams": "has streams the farm does not produce",
    "codec": "is not H.264 video",
    "corrupt": "is truncated or corrupt",
    "captions": "has captions that are not valid SRT",
    "concat": "could not be joined",
    "thumbnail": "gave no thumbnail",
    "timeout": "took too long to read",
}


class MediaError(Exception):
    """Scene-made media the farm will not pass on (the scene's doing); the message is the
    farm's own words, fit for tenants."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int
    duration: float


def _media_jail(settings: Settings) -> Jail:
    return Jail(settings, Limits.for_media(settings, settings.media_timeout_seconds), "media")


def run_media(
    jail: Jail,
    mode: str,
    spec: dict[str, Any],
    what: str,
    keep_going: Callable[[], bool],
    heartbeat_seconds: float,
) -> dict[str, Any]:
    """Run the media program; its report when ok, MediaError for the media's fault."""
    run = jail.run(mode, spec, keep_going, heartbeat_seconds)
    if run.stopped == "canceled":
        raise Canceled()
    if run.stopped or run.limit:
        raise MediaError(f"the {what} took more than the media limits to read")
    report = run.report
    if report is not None and report.get("ok") is False:
        problem = report.get("problem")
        raise MediaError(f"the {what} {PROBLEMS.get(str(problem), 'could not be read')}")
    if not run.ok or report is None:
        raise MediaJailFailed(_describe(run))
    return report


class Canceled(Exception):
    """The heartbeat said stop (job canceled or lease lost) while media work ran."""


class MediaJailFailed(RuntimeError):
    """The media jail itself failed (the platform's fault: it runs only the farm's program)."""


def _describe(run: RunResult) -> str:
    return f"media jail exited {run.returncode} without a report ({run.report_problem})"


def _info(report: dict[str, Any], max_frames: int) -> VideoInfo:
    ints = {}
    for name, high in (
        ("width", 16384),
        ("height", 16384),
        ("fps_num", 10**6),
        ("fps_den", 10**6),
        ("frames", max_frames),
    ):
        value = report.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise MediaError("the video's report is out of bounds")
        ints[name] = value
    if ints["fps_den"] == 0:
        raise MediaError("the video has no frame rate")
    duration = outputs._number(report.get("duration"), 0.0, 10.0 * 24 * 3600)
    return VideoInfo(
        ints["width"],
        ints["height"],
        Fraction(ints["fps_num"], ints["fps_den"]),
        ints["frames"],
        duration,
    )


def cues_from_report(raw: Any, max_ms: int) -> list[Cue]:
    """Cues as the media program reports them (``[[start_ms, end_ms, text], ...]``), bounded;
    also how a stored cue list (made of such a report) is read back."""
    if not isinstance(raw, list) or len(raw) > MAX_CUES:
        raise MediaError("the chunk has captions that are not valid SRT")
    cues = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3):
            raise MediaError("the chunk has captions that are not valid SRT")
        start, end, text = item
        for t in (start, end):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= max_ms:
                raise MediaError("the chunk has captions with times out of bounds")
        if not isinstance(text, str) or end < start:
            raise MediaError("the chunk has captions that are not valid SRT")
        cues.append(Cue(start, end, text[:MAX_CUE_TEXT]))
    return cues


def check_chunk(
    settings: Settings,
    video: Path,
    captions: Path | None,
    *,
    width: int,
    height: int,
    fps: int,
    max_frames: int,
    keep_going: Callable[[], bool] = lambda: True,
) -> tuple[VideoInfo, list[Cue]]:
    """The chunk's real frame count and its cues, or MediaError: not a plain MP4, not the job's
    geometry or fps, or more frames than ``max_frames``."""
    with _media_jail(settings) as jail:
        spec: dict[str, Any] = {"video": jail.put("chunk.mp4", video)}
        if captions is not None:
            spec["captions"] = jail.put("chunk.srt", captions)
        report = run_media(
            jail, "probe", spec, "chunk video", keep_going, settings.heartbeat_seconds
        )
    info = _info(report, 10**9)
    if (info.width, info.height) != (width, height) or info.fps != fps:
        raise MediaError(
            f"the chunk video is {info.width}x{info.height} at {float(info.fps):g} fps; "
            f"the job is {width}x{height} at {fps} fps"
        )
    if info.frames > max_frames:
        raise MediaError(
            f"the chunk rendered {info.frames} frames where its plan had {max_frames} "
            "(the scene is longer when drawn than when planned)"
        )
    max_ms = settings.max_scene_seconds * 1000 * 2
    cues = cues_from_report(report.get("cues", []), max_ms) if captions is not None else []
    return info, cues


def parse_captions(
    settings: Settings, captions: Path, keep_going: Callable[[], bool] = lambda: True
) -> list[Cue]:
    """A scene's .srt (its plan's) as the farm's cue list, parsed in a media jail."""
    with _media_jail(settings) as jail:
        spec = {"captions": jail.put("scene.srt", captions)}
        report = run_media(jail, "cues", spec, "captions", keep_going, settings.heartbeat_seconds)
    return cues_from_report(report.get("cues", []), settings.max_scene_seconds * 1000 * 2)


def probe(video: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Width, height, fps, duration and frames of a video, read in a media jail."""
    from farm.config import load_settings

    settings = settings or load_settings({})
    with _media_jail(settings) as jail:
        report = run_media(
            jail, "probe", {"video": jail.put("video.mp4", video)}, "video", lambda: True, 5.0
        )
    info = _info(report, 10**9)
    return {
        "width": info.width,
        "height": info.height,
        "fps": float(info.fps),
        "duration": info.duration,
        "frames": info.frames,
        "codec": "h264",
    }
