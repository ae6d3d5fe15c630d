"""Stitching: concatenate chunk videos without re-encoding, and take a thumbnail (ffmpeg-python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ffmpeg


def concat_videos(parts: list[Path], output: Path) -> None:
    """Join mp4s with the concat demuxer and stream copy: the frames are the chunks' own."""
    if len(parts) == 1:
        output.write_bytes(parts[0].read_bytes())
        return
    # Each entry carries its exact stream duration: without it the demuxer offsets the next
    # chunk by the container duration, which mp4 rounds to milliseconds, and timestamps drift.
    listing = output.with_suffix(".txt")
    listing.write_text(
        "".join(f"file '{p.resolve()}'\nduration {_stream_duration(p)}\n" for p in parts)
    )
    (
        ffmpeg.input(str(listing), format="concat", safe=0)
        .output(str(output), c="copy", movflags="+faststart")
        .overwrite_output()
        .run(quiet=True)
    )


def _stream_duration(video: Path) -> str:
    info = ffmpeg.probe(str(video), select_streams="v:0", show_entries="stream=duration")
    return str(info["streams"][0]["duration"])


def probe(video: Path) -> dict[str, Any]:
    """Width, height, fps, duration (seconds) and codec of a video's first video stream."""
    info = ffmpeg.probe(str(video))
    stream = next(s for s in info["streams"] if s["codec_type"] == "video")
    num, den = (int(x) for x in stream["r_frame_rate"].split("/"))
    return {
        "width": int(stream["width"]),
        "height": int(stream["height"]),
        "fps": num / den,
        "duration": float(info["format"]["duration"]),
        "codec": stream["codec_name"],
    }


def thumbnail(video: Path, output: Path) -> None:
    """A JPEG of a frame a third of the way in (the first frame is often empty)."""
    at = probe(video)["duration"] / 3
    (
        ffmpeg.input(str(video), ss=at)
        .output(str(output), vframes=1, **{"q:v": 3})
        .overwrite_output()
        .run(quiet=True)
    )
