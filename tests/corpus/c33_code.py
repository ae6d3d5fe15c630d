# corpus: CodeScene bounds=1
from manim import *

SOURCE = """def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
"""


class CodeScene(Scene):
    def construct(self):
        code = Code(code_string=SOURCE, language="python", background="window")
        self.play(FadeIn(code), run_time=0.5)
        self.play(code.animate.scale(0.7).to_edge(UP), run_time=0.5)
        self.wait(0.2)
