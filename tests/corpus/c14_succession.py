# corpus: Sequence bounds=1
from manim import *


class Sequence(Scene):
    def construct(self):
        shapes = VGroup(Circle(), Square(), Triangle()).arrange(RIGHT, buff=0.6)
        self.play(Succession(*[Create(s) for s in shapes]), run_time=1.0)
        self.play(
            AnimationGroup(*[s.animate.set_fill(PINK, 0.5) for s in shapes], lag_ratio=0.3),
            run_time=0.7,
        )
