# corpus: NumpyRandom bounds=1
from manim import *


class NumpyRandom(Scene):
    def construct(self):
        walk = np.cumsum(np.random.normal(0, 0.4, size=(25, 3)) * [1, 1, 0], axis=0)
        path = VMobject().set_points_as_corners(walk)
        self.play(Create(path), run_time=0.8)
        self.play(path.animate.shift(np.random.uniform(-1, 1, 3) * [1, 1, 0]), run_time=0.5)
