# corpus: SkipMiddleAndEnd bounds=2,5
from manim import *


class SkipMiddleAndEnd(Scene):
    def construct(self):
        dot = Dot()
        dot.add_updater(lambda m, dt: m.shift(RIGHT * 0.5 * dt))
        self.add(dot)
        self.play(Create(Square()), run_time=0.4)
        self.play(dot.animate.set_color(BLUE), run_time=0.33)
        self.next_section("draft", skip_animations=True)
        self.play(FadeIn(Text("draft")), run_time=0.6)
        self.pause(0.3)
        self.next_section("final")
        self.play(Create(Circle()), run_time=0.4)
        self.wait(0.3)
        self.next_section("outro", skip_animations=True)
        self.play(FadeOut(Circle()), run_time=0.5)
