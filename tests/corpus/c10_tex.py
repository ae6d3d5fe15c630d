# corpus: TexText bounds=1
from manim import *


class TexText(Scene):
    def construct(self):
        title = Tex(r"\textbf{Theorem.} $\int_0^1 x\,dx = \frac{1}{2}$")
        box = SurroundingRectangle(title, color=GREEN)
        self.play(FadeIn(title, shift=UP), run_time=0.5)
        self.play(Create(box), run_time=0.5)
        self.wait(0.3)
