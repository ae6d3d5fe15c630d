# corpus: Fields bounds=1
from manim import *
from manim_physics import *


class Fields(Scene):
    def construct(self):
        plus = Charge(2, LEFT * 2)
        minus = Charge(-1, RIGHT * 2)
        field = ElectricField(plus, minus)
        self.play(FadeIn(plus), FadeIn(minus), run_time=0.4)
        self.play(Create(field), run_time=0.6)
        wave = StandingWave(2, length=6, period=1, amplitude=0.6).to_edge(DOWN)
        self.add(wave)
        wave.start_wave()
        self.wait(0.7)
        wave.stop_wave()
