# corpus: Lagged bounds=1
from manim import *


class Lagged(Scene):
    def construct(self):
        dots = VGroup(*[Dot() for _ in range(12)]).arrange_in_grid(3, 4, buff=0.5)
        self.play(LaggedStartMap(GrowFromCenter, dots, lag_ratio=0.15), run_time=0.8)
        self.play(
            LaggedStart(*[d.animate.shift(UP * 0.5) for d in dots], lag_ratio=0.1), run_time=0.7
        )
        self.play(FadeOut(dots, lag_ratio=0.05), run_time=0.4)
