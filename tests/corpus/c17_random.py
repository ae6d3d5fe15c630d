# corpus: RandomDots bounds=1,2
import random

from manim import *


class RandomDots(Scene):
    def construct(self):
        dots = VGroup(
            *[
                Dot([random.uniform(-6, 6), random.uniform(-3, 3), 0], color=random_color())
                for _ in range(30)
            ]
        )
        self.play(FadeIn(dots), run_time=0.4)
        self.play(
            *[d.animate.shift([random.random() - 0.5, random.random() - 0.5, 0]) for d in dots],
            run_time=0.6,
        )
        self.play(dots.animate.set_color(random_bright_color()), run_time=0.4)
