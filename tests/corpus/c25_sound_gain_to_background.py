# corpus: SoundOverBackground bounds=1
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


class SoundOverBackground(Scene):
    def construct(self):
        self.add_sound(tone("bed.wav", 200, seconds=1.5, channels=2))
        sq = Square()
        self.play(Create(sq), run_time=0.5)
        # A voice over the music bed, which ducks by 8 dB while it plays.
        self.add_sound(tone("voice.wav", 700, seconds=0.4), gain_to_background=-8)
        self.play(sq.animate.scale(1.4), run_time=0.6)
        self.wait(0.3)
