# corpus: WaitUntil bounds=1,2
from manim import *


class WaitUntil(Scene):
    def construct(self):
        t = ValueTracker(0)
        t.add_updater(lambda m, dt: m.increment_value(dt))
        bar = always_redraw(
            lambda: Rectangle(width=0.3 + 2 * t.get_value(), height=0.5).set_fill(BLUE, 1)
        )
        self.add(t, bar)
        self.play(FadeIn(Text("go").to_edge(UP)), run_time=0.4)
        self.wait_until(lambda: t.get_value() > 1.0, max_time=3)
        self.play(bar.animate.set_color(RED), run_time=0.3)
