# corpus: Equations bounds=1,2
from manim import *


class Equations(Scene):
    def construct(self):
        eq1 = MathTex("a^2", "+", "b^2", "=", "c^2")
        eq2 = MathTex("c^2", "=", "a^2", "+", "b^2")
        self.play(Write(eq1), run_time=0.6)
        self.play(TransformMatchingTex(eq1, eq2), run_time=0.7)
        self.play(eq2.animate.scale(1.5).set_color(YELLOW), run_time=0.4)
