# corpus: Captions bounds=1,3
from manim import *


class Captions(Scene):
    def construct(self):
        sq = Square()
        sq.add_updater(lambda m, dt: m.rotate(0.8 * dt))
        self.add_subcaption("A square appears", duration=0.8)
        self.play(Create(sq), run_time=0.53)
        self.wait(0.37)
        self.play(sq.animate.shift(RIGHT), run_time=0.71, subcaption="It moves right")
        self.add_subcaption("Waiting a bit", duration=0.5, offset=0.1)
        self.wait(0.44)
        self.play(FadeOut(sq), run_time=0.41)
        self.add_subcaption("The end", duration=0.6)
