# corpus: SoundAtBoundary bounds=2
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


class SoundAtBoundary(Scene):
    def construct(self):
        click = tone("click.wav", 660)
        t = Triangle()
        self.play(Create(t), run_time=0.4)
        self.play(t.animate.rotate(PI / 3), run_time=0.4)
        # Added just before the play that starts the second chunk.
        self.add_sound(click)
        self.play(t.animate.shift(LEFT), run_time=0.4)
        self.add_sound(click, time_offset=0.05)
        self.wait(0.3)
