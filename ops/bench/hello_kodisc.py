"""A first scene, as a Kodisc quickstart user would send it (the bench's `hello` contestant)."""

from manim import *


class HelloKodisc(Scene):
    def construct(self):
        title = Text("Hello, Kodisc!", font_size=64)
        circle = Circle(radius=1.5, color=BLUE).next_to(title, DOWN)
        self.play(Write(title))
        self.play(Create(circle))
        self.play(circle.animate.set_fill(BLUE, opacity=0.5))
        self.wait(0.5)
