# corpus: SvgScene bounds=1
import tempfile
from pathlib import Path

from manim import *

ICON = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">
<path d="M10 80 L50 10 L90 80 Z" fill="#3a7" stroke="#123" stroke-width="4"/>
<circle cx="50" cy="58" r="12" fill="#fd2"/>
</svg>"""


class SvgScene(Scene):
    def construct(self):
        path = Path(tempfile.mkdtemp()) / "icon.svg"
        path.write_text(ICON)
        icon = SVGMobject(str(path)).scale(2)
        self.play(DrawBorderThenFill(icon), run_time=0.7)
        self.play(icon.animate.scale(0.5).to_edge(LEFT), run_time=0.5)
