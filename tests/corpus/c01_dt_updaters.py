# corpus: DtUpdaters bounds=1,3
from manim import *


class DtUpdaters(Scene):
    def construct(self):
        dot = Dot(color=YELLOW).shift(LEFT * 4)
        dot.add_updater(lambda m, dt: m.shift(RIGHT * 1.3 * dt))
        bar = Rectangle(width=0.2, height=2)
        bar.add_updater(lambda m, dt: m.rotate(2.1 * dt))
        self.add(dot, bar)
        self.wait(0.41)
        self.play(bar.animate.set_color(RED), run_time=0.57)
        self.wait(0.52)
        self.play(Indicate(dot), run_time=0.63)
