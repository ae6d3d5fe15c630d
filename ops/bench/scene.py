"""The benchmark scene: 15 animations of mixed kinds, with updaters, about 12 s of video."""

from manim import *


class Benchmark(Scene):
    def construct(self):
        title = Text("Render farm benchmark", font_size=40).to_edge(UP)
        self.play(Write(title), run_time=1)
        grid = VGroup(*[Square(0.6).set_fill(BLUE, 0.4) for _ in range(24)])
        grid.arrange_in_grid(4, 6, buff=0.2)
        self.play(LaggedStartMap(FadeIn, grid, lag_ratio=0.05), run_time=1)
        self.play(grid.animate.rotate(PI / 6).scale(0.8), run_time=1)
        dot = Dot(color=YELLOW).shift(LEFT * 5 + DOWN * 3)
        dot.add_updater(lambda m, dt: m.shift(RIGHT * 0.8 * dt))
        self.add(dot)
        for i in range(4):
            self.play(
                grid[i * 6 : (i + 1) * 6].animate.set_color(RED).shift(UP * 0.2), run_time=0.8
            )
        circle = Circle(radius=2, color=GREEN)
        self.play(Transform(grid, circle), run_time=1)
        tracker = ValueTracker(0)
        needle = always_redraw(
            lambda: Line(
                ORIGIN,
                1.5 * np.array([np.cos(tracker.get_value()), np.sin(tracker.get_value()), 0]),
            ).to_edge(DOWN)
        )
        self.add(needle)
        self.play(tracker.animate.set_value(2 * PI), run_time=1.2)
        self.play(Rotate(grid, PI), run_time=1)
        self.wait(0.6)
        self.play(grid.animate.scale(0.5).shift(RIGHT * 3), run_time=0.8)
        self.play(Indicate(title), run_time=0.8)
        self.play(FadeOut(grid), FadeOut(title), FadeOut(needle), run_time=0.8)
        self.wait(0.5)
