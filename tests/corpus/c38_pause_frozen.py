# corpus: Frozen bounds=1,2,3
from manim import *


class Frozen(Scene):
    def construct(self):
        sq = Square()
        self.play(Create(sq), run_time=0.53)
        self.pause(0.45)
        self.play(sq.animate.shift(LEFT), run_time=0.29)
        self.wait(0.37, frozen_frame=True)
        self.play(FadeOut(sq), run_time=0.31)
