"""One audio track for a whole scene, built the way manim 0.22's SceneFileWriter builds it.

Chunks render video only. Each ``add_sound`` plain manim keeps reaches here as a WAV that the
render child decoded with manim's own ``add_sound`` (gain applied) and its absolute scene time
(``workers.scene_runner.Sound``). ``mix`` lays them, in call order, on one track exactly as
``SceneFileWriter.add_audio_segment`` does (a 1 s silent start at 11025 Hz, silence appended
in whole milliseconds, ``overlay`` at ``int(1000 * time)`` ms); ``encode_aac`` converts it as
``combine_to_movie`` does (WAV export, then PyAV's native AAC encoder, ADTS); ``mux`` puts the
AAC packets beside the stitched video's, both stream-copied. Same samples in, same packets
out: the audio stream decodes to plain manim's.

Pure functions of their inputs; no manim import. The WAVs come from a scene, so callers treat
them as hostile: sizes are checked before they get here, and parsing them is pydub's ``wave``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SoundAt", "encode_aac", "mix", "mux", "with_audio"]


@dataclass(frozen=True)
class SoundAt:
    """A decoded sound (WAV file) placed at an absolute time of the scene."""

    path: Path
    time: float
    gain_to_background: float | None = None


def mix(sounds: Sequence[SoundAt]) -> Any | None:
    """The scene's track (a pydub AudioSegment), or None when the scene added no sound."""
    if not sounds:
        return None
    from pydub import AudioSegment

    track = AudioSegment.silent()
    for sound in sounds:
        with sound.path.open("rb") as wav:
            segment = AudioSegment.from_file(wav, format="wav")
        track = _add_segment(track, segment, sound)
    # manim adds an empty segment before export "so the sound file length matches the video".
    return _add_segment(track, AudioSegment.silent(0), None)


def _add_segment(track: Any, segment: Any, sound: SoundAt | None) -> Any:
    from pydub import AudioSegment

    end = track.duration_seconds
    time = end if sound is None else sound.time
    if time < 0:
        raise ValueError("Adding sound at timestamp < 0")
    diff = time + segment.duration_seconds - end
    if diff > 0:
        track = track.append(AudioSegment.silent(math.ceil(diff * 1000)), crossfade=0)
    return track.overlay(
        segment,
        position=int(1000 * time),
        gain_during_overlay=None if sound is None else sound.gain_to_background,
    )


def encode_aac(track: Any, out: Path) -> Path:
    """Write the track as AAC in ADTS (``out``, suffix .aac), via a WAV, as manim does."""
    import av

    wav = out.with_suffix(".wav")
    track.export(str(wav), format="wav", bitrate="312k").close()
    with av.open(str(wav)) as source, av.open(str(out), "w") as target:
        stream = source.streams.audio[0]
        encoder = target.add_stream("aac")
        for frame in source.decode(stream):
            for packet in encoder.encode(frame):
                target.mux(packet)
        for packet in encoder.encode():
            target.mux(packet)
    wav.unlink()
    return out


def mux(video: Path, audio: Path, out: Path) -> None:
    """Video and audio packets into one mp4, both stream-copied."""
    import av

    with av.open(str(video)) as video_in, av.open(str(audio)) as audio_in:
        container = av.open(str(out), mode="w", options={"movflags": "+faststart"})
        try:
            video_stream = video_in.streams.video[0]
            audio_stream = audio_in.streams.audio[0]
            video_out = container.add_stream_from_template(template=video_stream)
            audio_out = container.add_stream_from_template(template=audio_stream)
            for source, target, stream in (
                (video_in, video_out, video_stream),
                (audio_in, audio_out, audio_stream),
            ):
                for packet in source.demux(stream):
                    if packet.dts is None:  # the demuxer's flush packets
                        continue
                    packet.stream = target
                    container.mux(packet)
        finally:
            container.close()


def with_audio(video: Path, sounds: Sequence[SoundAt], out: Path) -> bool:
    """Write ``video`` plus the scene's mixed track to ``out``; False (no file) if silent."""
    track = mix(sounds)
    if track is None:
        return False
    aac = encode_aac(track, out.with_name(out.stem + "-track.aac"))
    try:
        mux(video, aac, out)
    finally:
        aac.unlink()
    return True
