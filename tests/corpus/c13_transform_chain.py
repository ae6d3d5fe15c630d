# corpus: TransformChain bounds=2,4
from manim import *


class TransformChain(Scene):
    def construct(self):
        m = Square()
        self.play(Create(m), run_time=0.47)
        for target in [Circle(color=RED), Triangle(color=GREEN), RegularPolygon(5), Star()]:
            self.play(Transform(m, target), run_time=0.38)
        self.play(ReplacementTransform(m, Dot()), run_time=0.55)
