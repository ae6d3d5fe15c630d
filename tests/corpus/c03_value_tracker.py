# corpus: Tracker bounds=1,3
from manim import *


class Tracker(Scene):
    def construct(self):
        t = ValueTracker(0.0)
        line = always_redraw(
            lambda: Line(ORIGIN, [3 * np.cos(t.get_value()), 3 * np.sin(t.get_value()), 0])
        )
        dot = always_redraw(lambda: Dot(line.get_end(), color=GREEN))
        self.add(line, dot)
        self.play(t.animate.set_value(1.7), run_time=0.74)
        self.wait(0.29)
        self.play(t.animate.set_value(-0.6), run_time=0.66, rate_func=there_and_back)
        t.add_updater(lambda m, dt: m.increment_value(0.9 * dt))
        self.wait(0.61)
