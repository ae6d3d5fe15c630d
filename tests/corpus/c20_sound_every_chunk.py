# corpus: SoundEveryChunk bounds=1,3
import math
import struct
import tempfile
import wave
from pathlib import Path

from manim import *


def tone(name, freq, seconds=0.15, rate=44100, channels=1):
    """A short sine beep written as a 16-bit WAV, as a scene might make its own sounds."""
    path = Path(tempfile.mkdtemp()) / name
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        one = [
            int(9000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(seconds * rate))
        ]
        w.writeframes(b"".join(struct.pack("<h", v) * channels for v in one))
    return str(path)


class SoundEveryChunk(Scene):
    def construct(self):
        click = tone("click.wav", 880)
        sq = Square()
        self.add_sound(click)
        self.play(Create(sq), run_time=0.53)
        self.add_sound(click, time_offset=0.1)
        self.play(sq.animate.shift(RIGHT), run_time=0.47)
        self.wait(0.4)
        self.add_sound(tone("low.wav", 220, seconds=0.3, rate=22050, channels=2), gain=-6)
        self.play(FadeOut(sq), run_time=0.33)
