# corpus: SkipOpening bounds=3
from manim import *


class SkipOpening(Scene):
    def construct(self):
        # The documented use: skip the opening while working on the rest.
        self.next_section("intro", skip_animations=True)
        title = Text("Intro")
        self.play(Write(title), run_time=0.8)
        self.play(FadeOut(title), run_time=0.5)
        self.next_section("main")
        sq = Square()
        self.play(Create(sq), run_time=0.5)
        self.play(sq.animate.shift(RIGHT), run_time=0.4)
        self.wait(0.3)
