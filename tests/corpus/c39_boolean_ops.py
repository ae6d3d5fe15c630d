# corpus: Booleans bounds=1
from manim import *


class Booleans(Scene):
    def construct(self):
        a = Circle(radius=1.3).shift(LEFT * 0.6)
        b = Square(side_length=2).shift(RIGHT * 0.6)
        self.play(Create(a), Create(b), run_time=0.5)
        union = Union(a, b, color=GREEN, fill_opacity=0.5)
        inter = Intersection(a, b, color=RED, fill_opacity=0.8)
        self.play(FadeIn(union), run_time=0.4)
        self.play(Transform(union, inter), run_time=0.5)
