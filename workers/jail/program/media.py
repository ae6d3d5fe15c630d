"""The media jail's program: every read of scene-made media, and every subtitle parse.

Runs inside a jail like the render's (no network, no host files, its own limits and wall
clock), as ``python -m workers.jail.program.media probe|stitch|cues SPEC.json RESULT.json``
(or ``serve``: warm, the command comes on stdin), and imports nothing of the project. FFmpeg
is held to the formats the farm produces: the mov/mp4 demuxer named explicitly (``-f mp4``,
never guessed from the content, so a playlist or a manifest posing as a chunk is not
followed), the ``file`` protocol only, and a demuxer whitelist. Probes and thumbnails read the
files through FFmpeg's own libraries in this process (PyAV, as manim's file writer does): an
ffmpeg or ffprobe process costs 0.06 to 0.12 s just to start on a small node, and a stitch ran
three. The join is the one ffmpeg command (ffmpeg-python builds it): its concat demuxer and
stream copy. Its report holds numbers and problem codes only, never text read from the media
(the worker shows tenants fixed messages, not FFmpeg's).

Inputs are at the names the worker chose (``in/...``); outputs go to ``out/video.mp4``,
``out/thumb.jpg``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import av.logging
import ffmpeg

from .ready import signal_started

MP4_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2"
# Every file FFmpeg opens here: the file protocol only, no demuxer outside the mp4 family.
_RESTRICT = {"protocol_whitelist": "file", "format_whitelist": MP4_DEMUXERS}
_TIMEOUT = 600  # the jail's wall clock is the real bound; this only keeps a run from hanging

VIDEO_CODECS = ("h264",)
AUDIO_CODECS = ("aac", "mp3", "opus")
MAX_CUES = 100_000
MAX_CUE_TEXT = 4096
THUMBNAIL_QUALITY = 90  # JPEG quality (Pillow's scale)
# FFmpeg's errors reach Python's logging (``probe_video`` captures them); nothing below.
av.logging.set_level(av.logging.ERROR)
_TIME = re.compile(r"(\d{1,3}):(\d{2}):(\d{2})[,.](\d{3})")


class Problem(Exception):
    """The media is not what the farm produces; ``code`` is one of a fixed set."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _open(path: str) -> Any:
    """A scene-made file, opened by the mp4 demuxer alone over the file protocol alone."""
    return av.open(path, format="mp4", options=dict(_RESTRICT))


def probe_video(path: str) -> dict[str, Any]:
    """Geometry, codec and exact frame count of a plain mp4 (every packet read, as
    ``ffprobe -count_packets`` reads them), or Problem."""
    try:
        container = _open(path)
    except (av.FFmpegError, OSError):
        raise Problem("not_mp4") from None
    with container:
        streams = list(container.streams)
        videos = [s for s in streams if s.type == "video"]
        others = [s for s in streams if s.type != "video"]
        if len(videos) != 1 or len(others) > 1:
            raise Problem("streams")
        if others and (others[0].type != "audio" or _codec(others[0]) not in AUDIO_CODECS):
            raise Problem("streams")
        video = videos[0]
        if _codec(video) not in VIDEO_CODECS:
            raise Problem("codec")
        # A truncated or corrupt file makes the demuxer or the h264 parser log errors (what
        # ffprobe prints on stderr) where it does not raise.
        with av.logging.Capture() as logs:
            try:
                frames = sum(1 for packet in container.demux(video) if packet.dts is not None)
            except av.FFmpegError:
                raise Problem("corrupt") from None
        if any(level <= av.logging.ERROR for level, _, _ in logs):
            raise Problem("corrupt")
        rate = video.base_rate or video.average_rate
        if video.duration is not None:
            duration = float(video.duration * video.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        if not rate or not video.width or not video.height:
            raise Problem("not_mp4")
        result = {
            "width": int(video.width),
            "height": int(video.height),
            "fps_num": rate.numerator,
            "fps_den": rate.denominator,
            "frames": frames,
            "duration": duration,
        }
    if not math.isfinite(duration) or duration < 0:
        raise Problem("not_mp4")
    return result


def _codec(stream: Any) -> str | None:
    try:
        return str(stream.codec_context.name)
    except (AttributeError, av.FFmpegError):
        return None


def parse_srt(path: str) -> list[list[Any]]:
    """[start_ms, end_ms, text] of each cue of an .srt file, or Problem("captions")."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        raise Problem("captions") from None
    cues: list[list[Any]] = []
    for block in re.split(r"\r?\n\s*\r?\n", text.strip()):
        lines = block.strip().splitlines()
        arrow = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if arrow is None:
            continue
        start, _, end = lines[arrow].partition("-->")
        end_words = end.split()
        if not end_words:
            raise Problem("captions")
        cues.append([_ms(start), _ms(end_words[0]), "\n".join(lines[arrow + 1 :])[:MAX_CUE_TEXT]])
        if len(cues) > MAX_CUES:
            raise Problem("captions")
    return cues


def _ms(stamp: str) -> int:
    match = _TIME.fullmatch(stamp.strip())
    if not match:
        raise Problem("captions")
    h, m, s, ms = (int(g) for g in match.groups())
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def stitch(
    parts: list[str],
    video: str,
    thumb: str,
    sounds: list[dict[str, Any]] | None = None,
    durations: list[float] | None = None,
    fps: float | None = None,
) -> dict[str, Any]:
    """Join the parts (concat demuxer, stream copy), lay the scene's sounds on one track beside
    them (``audio_mix``, as manim's file writer does), then take a thumbnail a third of the way.

    With every part's length and the fps known, the thumbnail is taken from the part holding
    that frame while the join runs (the join copies the parts' frames: the same frame).
    """
    early = durations is not None and len(durations) == len(parts) > 1 and bool(fps)
    with ThreadPoolExecutor(max_workers=1) as pool:
        shot = pool.submit(_thumbnail_of_parts, parts, durations, fps, thumb) if early else None
        if sounds:
            joined_video = str(Path(video).with_name("video-only.mp4"))
            length = _join(parts, joined_video, durations)
            from . import audio_mix

            placed = [
                audio_mix.SoundAt(Path(s["file"]), float(s["time"]), s.get("gain_to_background"))
                for s in sounds
            ]
            try:
                audio_mix.with_audio(Path(joined_video), placed, Path(video))
            except Exception:
                raise Problem("audio") from None
        else:
            length = _join(parts, video, durations)
        if shot is None:
            return _thumbnail(video, thumb, length)
        info = probe_video(video)
        shot.result()  # its Problem, if any
        return info


def _thumbnail_of_parts(parts: list[str], durations: Any, fps: Any, thumb: str) -> None:
    """The joined video's first frame at or after a third of its length, taken from the part
    that holds it: past a part's last frame, that is the next part's first."""
    at, start, index = sum(durations) / 3, 0.0, 0
    while index < len(parts) - 1 and at > start + durations[index] - 1 / fps + 1e-6:
        start += durations[index]
        index += 1
    _shoot(parts[index], max(0.0, at - start), thumb)


def _join(parts: list[str], video: str, durations: list[float] | None = None) -> float | None:
    """Join the parts into ``video``; their total length (None: a single part of unknown
    length, copied).

    Each entry carries its exact stream duration: without it the demuxer offsets the next part
    by the container duration, which mp4 rounds to milliseconds, and times drift. The worker
    knows each part's frames (``durations``); else each part is probed first. Either
    way only the mp4 demuxer reads a part, and the joined video is probed after.
    """
    if len(parts) == 1:
        Path(video).write_bytes(Path(parts[0]).read_bytes())
        return None if not durations or len(durations) != 1 else float(durations[0])
    if durations is None or len(durations) != len(parts):
        durations = [probe_video(p)["duration"] for p in parts]
    listing = Path(video).with_name("parts.ffconcat")
    listing.write_text(
        "ffconcat version 1.0\n"
        + "".join(
            f"file '{Path(p).resolve()}'\nduration {d}\n"
            for p, d in zip(parts, durations, strict=True)
        )
    )
    source = ffmpeg.input(
        str(listing),
        f="concat",
        safe=0,
        protocol_whitelist="file",
        format_whitelist="concat," + MP4_DEMUXERS,
    )
    command = (
        source.output(video, c="copy", movflags="+faststart")
        .global_args("-nostdin", "-v", "error")
        .overwrite_output()
        .compile()
    )
    joined = subprocess.run(command, capture_output=True, timeout=_TIMEOUT, check=False)
    if joined.returncode != 0:
        raise Problem("concat")
    return float(sum(durations))


def _thumbnail(video: str, thumb: str, length: float | None = None) -> dict[str, Any]:
    """The video's probe, and a frame a third of the way in as the thumbnail."""
    info = probe_video(video)
    _shoot(video, (info["duration"] if length is None else length) / 3, thumb)
    return info


def _shoot(video: str, at: float, thumb: str) -> None:
    """The first frame at or after ``at`` seconds, as a JPEG; Problem("thumbnail") if none."""
    try:
        with _open(video) as container:
            stream = container.streams.video[0]
            # From the keyframe at or before it (each part starts with one).
            container.seek(int(at / stream.time_base), stream=stream)
            for frame in container.decode(stream):
                if frame.time is not None and frame.time >= at - 1e-6:
                    frame.to_image().save(thumb, "JPEG", quality=THUMBNAIL_QUALITY)
                    return
    except (av.FFmpegError, OSError, ValueError, IndexError):
        pass
    raise Problem("thumbnail")


def _serve() -> str:
    """Warm (FFmpeg's libraries imported above), wait for the one command this process runs:
    the worker puts the inputs and the spec in place, then writes it on stdin."""
    command = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return command


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m workers.jail.program.media probe|stitch|cues|serve SPEC.json
    RESULT.json``."""
    signal_started()
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "serve":
        args[0] = _serve()
    if len(args) != 3 or args[0] not in ("probe", "stitch", "cues"):
        print("usage: media probe|stitch|cues SPEC.json RESULT.json", file=sys.stderr)
        return 1
    command, spec_path, result_path = args
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result: dict[str, Any]
    try:
        if command == "cues":
            result = {"ok": True, "cues": parse_srt(spec["captions"])}
        elif command == "probe":
            result = {"ok": True, **probe_video(spec["video"])}
            if spec.get("captions"):
                result["cues"] = parse_srt(spec["captions"])
        else:
            result = {
                "ok": True,
                **stitch(
                    spec["parts"],
                    spec["video"],
                    spec["thumb"],
                    spec.get("sounds"),
                    spec.get("durations"),
                    spec.get("fps"),
                ),
            }
        code = 0
    except Problem as exc:
        result, code = {"ok": False, "problem": exc.code}, 2
    except subprocess.TimeoutExpired:
        result, code = {"ok": False, "problem": "timeout"}, 2
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
