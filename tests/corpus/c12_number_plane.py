# corpus: Plane bounds=1
from manim import *


class Plane(Scene):
    def construct(self):
        plane = NumberPlane(x_range=[-5, 5], y_range=[-3, 3])
        arrow = Vector([1, 1], color=YELLOW)
        self.play(Create(plane), GrowArrow(arrow), run_time=0.6)
        self.play(
            ApplyMatrix([[1, 1], [0, 1]], plane), ApplyMatrix([[1, 1], [0, 1]], arrow), run_time=0.8
        )
        self.wait(0.2)
