# corpus: AlongPath bounds=1,2
from manim import *


class AlongPath(Scene):
    def construct(self):
        path = ParametricFunction(lambda t: [2 * np.cos(t), np.sin(2 * t), 0], t_range=[0, TAU])
        dot = Dot(color=RED)
        trace = TracedPath(dot.get_center, stroke_color=YELLOW)
        self.add(path, trace, dot)
        self.play(MoveAlongPath(dot, path), run_time=1.1, rate_func=linear)
        self.play(Rotating(path, angle=PI / 2, run_time=0.6))
        self.wait(0.2)
