from manim import *


class Hello(Scene):
    def construct(self):
        title = Text("Hello, render farm")
        square = Square(color=BLUE)
        self.play(Write(title))
        self.add_subcaption("A square appears", duration=1)
        self.play(title.animate.to_edge(UP), Create(square))
        self.play(square.animate.rotate(PI / 4).set_fill(BLUE, opacity=0.5))
        self.wait(0.5)
        self.play(FadeOut(square), FadeOut(title))
