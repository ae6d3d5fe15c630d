# corpus: AlwaysRedraw bounds=1,2
from manim import *


class AlwaysRedraw(Scene):
    def construct(self):
        a = Dot(LEFT * 2, color=BLUE)
        b = Dot(RIGHT * 2, color=RED)
        link = always_redraw(lambda: Line(a.get_center(), b.get_center()))
        label = always_redraw(lambda: MathTex(f"{a.get_center()[1]:.1f}").next_to(a, UP))
        self.add(link, a, b, label)
        self.play(a.animate.shift(UP * 2), run_time=0.6)
        self.play(b.animate.shift(DOWN), Rotate(a, PI, about_point=ORIGIN), run_time=0.7)
        self.wait(0.3)
