# corpus: Field bounds=1
from manim import *


class Field(Scene):
    def construct(self):
        field = ArrowVectorField(
            lambda p: np.array([-p[1], p[0], 0]) * 0.4, x_range=[-5, 5, 1], y_range=[-3, 3, 1]
        )
        self.play(Create(field), run_time=0.6)
        dot = Dot(RIGHT * 2, color=YELLOW)
        self.add(dot)
        dot.add_updater(lambda m, dt: m.shift(field.func(m.get_center()) * dt))
        self.wait(0.7)
