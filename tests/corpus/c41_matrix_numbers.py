# corpus: Numbers bounds=1,2
from manim import *


class Numbers(Scene):
    def construct(self):
        m = Matrix([[1, 2], [3, 4]]).to_edge(LEFT)
        counter = DecimalNumber(0, num_decimal_places=2).to_edge(RIGHT)
        counter.add_updater(lambda d, dt: d.set_value(d.get_value() + 1.7 * dt))
        self.add(counter)
        self.play(Write(m), run_time=0.6)
        self.play(m.get_brackets().animate.set_color(BLUE), run_time=0.4)
        self.wait(0.5)
