# corpus: SkipThenUpdater bounds=3
from manim import *


class SkipThenUpdater(Scene):
    def construct(self):
        needle = Line(ORIGIN, RIGHT * 2)
        # Time-based: its angle after the skipped section depends on how the skip advances.
        needle.add_updater(lambda m, dt: m.rotate(1.0 * dt, about_point=ORIGIN))
        self.add(needle)
        self.play(FadeIn(Dot()), run_time=0.4)
        self.next_section("skipped", skip_animations=True)
        self.play(Create(Circle()), run_time=0.53)
        self.wait(0.47)
        self.next_section("shown")
        self.play(needle.animate.set_color(RED), run_time=0.4)
        self.wait(0.4)
