"""Join a job's chunk videos (stream copy) and take its thumbnail, in a media jail."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farm.config import Settings
from workers.jail.jail import Jail
from workers.jail.limits import Limits
from workers.jail.pool import JailPool
from workers.media.check import MediaError, VideoInfo, _info, run_media

THUMB_BYTES = 10 * 2**20


def stitch_limits(settings: Settings) -> Limits:
    """The stitch's media jail: the media limits, with the stitch's own wall clock."""
    return Limits.for_media(settings, settings.stitch_timeout_seconds)


def stitch(
    settings: Settings,
    parts: list[Path],
    dest: Path,
    keep_going: Callable[[], bool] = lambda: True,
    sounds: list[tuple[Path, float, float | None]] | None = None,
    durations: list[float] | None = None,
    fps: int | None = None,
    jails: JailPool | None = None,
) -> tuple[Path, Path, VideoInfo]:
    """``dest/video.mp4`` and ``dest/thumb.jpg`` from the parts, in order, and the video's info;
    with ``sounds`` (a decoded WAV, its time in the scene, its gain to background), one audio
    track laid as manim lays it (jail/program/audio_mix.py) beside the joined video. With
    ``durations`` (each part's length, known from its frames) the parts are not probed first;
    the joined video is, either way. With ``fps`` as well, the thumbnail is taken from the part
    that holds it while the join runs.

    ``jails``: the worker's pool of media jails (``workers/runtime.py``). Its jail has started
    its program (FFmpeg's libraries imported) while the job rendered: 0.1 to 0.3 s less on the
    job's last step on one core. It warms no next one here (that would take CPU from this job's
    uploads); the stitch step warms it once the job is recorded."""
    max_bytes = settings.max_output_mb * 2**20
    opened = (
        jails.take(warm_next=lambda: False)
        if jails is not None
        else Jail(settings, stitch_limits(settings), "media")
    )
    with opened as jail:
        names = [jail.put(f"{i:04d}.mp4", part) for i, part in enumerate(parts)]
        spec: dict[str, Any] = {
            "parts": names,
            "video": f"{names[0].rsplit('/in/', 1)[0]}/out/video.mp4",
            "thumb": f"{names[0].rsplit('/in/', 1)[0]}/out/thumb.jpg",
        }
        if durations is not None:
            spec["durations"] = durations
            spec["fps"] = fps
        if sounds:
            spec["sounds"] = [
                {"file": jail.put(f"sound-{i:04d}.wav", path), "time": at, "gain_to_background": g}
                for i, (path, at, g) in enumerate(sounds)
            ]
        report = run_media(
            jail, "stitch", spec, "job video", keep_going, settings.heartbeat_seconds
        )
        video = jail.copy_out("video.mp4", max_bytes, "job video")
        thumb = jail.copy_out("thumb.jpg", THUMB_BYTES, "thumbnail")
        if video is None or thumb is None:
            raise MediaError("the job video could not be joined")
        dest.mkdir(parents=True, exist_ok=True)
        final_video, final_thumb = dest / "video.mp4", dest / "thumb.jpg"
        shutil.move(video, final_video)
        shutil.move(thumb, final_thumb)
    return final_video, final_thumb, _info(report, 10**9)
