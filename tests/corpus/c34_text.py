# corpus: Texts bounds=1
from manim import *


class Texts(Scene):
    def construct(self):
        hello = Text("Hello, farm!", font_size=56, t2c={"farm": BLUE})
        markup = MarkupText('<b>bold</b> and <i>italic</i> <span fgcolor="red">red</span>').next_to(
            hello, DOWN
        )
        self.play(Write(hello), run_time=0.6)
        self.play(FadeIn(markup, shift=UP), run_time=0.5)
        self.play(AddTextLetterByLetter(Text("abc").to_edge(DOWN)), run_time=0.5)
