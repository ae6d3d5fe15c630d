# corpus: SoundAfterLastPlay bounds=1
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


class SoundAfterLastPlay(Scene):
    def construct(self):
        s = Square(color=GREEN)
        self.play(DrawBorderThenFill(s), run_time=0.5)
        self.play(s.animate.shift(UP), run_time=0.4)
        # After the last play: the sound runs past the video's end, as in plain manim.
        self.add_sound(tone("tail.wav", 330, seconds=0.6))
