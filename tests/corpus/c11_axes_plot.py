# corpus: AxesPlot bounds=1,3
from manim import *


class AxesPlot(Scene):
    def construct(self):
        axes = Axes(x_range=[0, 6, 1], y_range=[-1.5, 1.5, 0.5], x_length=9, y_length=4)
        graph = axes.plot(np.sin, color=BLUE)
        x = ValueTracker(0.5)
        dot = always_redraw(lambda: Dot(axes.c2p(x.get_value(), np.sin(x.get_value())), color=RED))
        self.play(Create(axes), run_time=0.5)
        self.play(Create(graph), run_time=0.6)
        self.add(dot)
        self.play(x.animate.set_value(5.5), run_time=0.8)
        area = axes.get_area(graph, x_range=[0, PI], color=GREEN, opacity=0.4)
        self.play(FadeIn(area), run_time=0.4)
