# corpus: Background bounds=1
from manim import *

config.background_color = "#1e2a3a"


class Background(Scene):
    def construct(self):
        stars = VGroup(*[Star(outer_radius=0.3).shift([x, 0, 0]) for x in range(-3, 4)])
        self.play(LaggedStartMap(SpinInFromNothing, stars, lag_ratio=0.2), run_time=0.8)
        self.play(stars.animate.set_color(GOLD).arrange(DOWN, buff=0.1).scale(0.5), run_time=0.5)
