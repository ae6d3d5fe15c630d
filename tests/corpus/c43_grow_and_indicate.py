# corpus: Emphasis bounds=2
from manim import *


class Emphasis(Scene):
    def construct(self):
        arrow = Arrow(LEFT * 2, RIGHT * 2)
        word = Text("focus").next_to(arrow, UP)
        self.play(GrowArrow(arrow), run_time=0.4)
        self.play(Write(word), run_time=0.4)
        self.play(Circumscribe(word), run_time=0.5)
        self.play(Wiggle(arrow), run_time=0.5)
        self.play(FocusOn(word), Flash(arrow.get_end()), run_time=0.4)
