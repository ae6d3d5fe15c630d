# corpus: Network bounds=1
from manim import *


class Network(Scene):
    def construct(self):
        g = Graph(
            [1, 2, 3, 4],
            [(1, 2), (2, 3), (3, 4), (4, 1), (1, 3)],
            layout="circular",
            layout_scale=2,
        )
        self.play(Create(g), run_time=0.6)
        self.play(g[1].animate.move_to(UP * 2), g[3].animate.set_color(RED), run_time=0.5)
