"""ffmpeg work on scene-made media: checking a chunk, stitching a job, probing a video.

Every byte here was made by a scene, so none of it is parsed on the host: each call runs the
media program (``workers/jail/program/media.py``) in a jail of its own with its own limits and
wall clock, and reads back only the outputs it names and a report of numbers and problem codes.
Tenants see the farm's fixed messages (``MediaError``), never text read from the media.
"""

from workers.media.check import (
    MediaError,
    VideoInfo,
    check_chunk,
    cues_from_report,
    parse_captions,
    probe,
)
from workers.media.stitch import stitch, stitch_limits

__all__ = [
    "MediaError",
    "VideoInfo",
    "check_chunk",
    "cues_from_report",
    "parse_captions",
    "probe",
    "stitch",
    "stitch_limits",
]
