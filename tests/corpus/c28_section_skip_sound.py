# corpus: SkipSound bounds=3
import math
import struct
import tempfile
import wave
from pathlib import Path

from manim import *


def beep(freq):
    path = Path(tempfile.mkdtemp()) / "beep.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / 16000)))
                for i in range(2400)
            )
        )
    return str(path)


class SkipSound(Scene):
    def construct(self):
        a, b, c = beep(300), beep(600), beep(900)
        self.play(Create(Square()), run_time=0.4)
        self.next_section("skipped", skip_animations=True)
        self.add_sound(a)  # kept: the skip starts with the next play
        self.play(FadeIn(Circle()), run_time=0.5)
        self.add_sound(b)  # dropped, as plain manim drops it
        self.next_section("shown")
        self.add_sound(c)  # dropped too: plain manim still skips until the next play
        self.play(Create(Triangle()), run_time=0.4)
        self.add_sound(a)
        self.wait(0.4)
