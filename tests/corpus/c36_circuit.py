# corpus: SimpleCircuit bounds=1
from manim import *
from manim_circuit import *


class SimpleCircuit(Scene):
    def construct(self):
        r = Resistor().shift(UP)
        c = Capacitor().shift(DOWN)
        self.play(Create(r), run_time=0.5)
        self.play(Create(c), run_time=0.5)
        self.play(VGroup(r, c).animate.scale(0.6), run_time=0.4)
