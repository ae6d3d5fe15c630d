# corpus: SoundOnlyLastChunk bounds=2
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


class SoundOnlyLastChunk(Scene):
    def construct(self):
        d = Dot()
        self.play(GrowFromCenter(d), run_time=0.4)
        self.play(d.animate.shift(RIGHT * 2), run_time=0.4)
        self.play(d.animate.shift(LEFT * 4), run_time=0.5)
        self.add_sound(tone("ding.wav", 990, seconds=0.2), time_offset=-0.25, gain=3)
        self.wait(0.3)
