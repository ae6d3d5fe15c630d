# corpus: ImageFile bounds=1
import tempfile
from pathlib import Path

from manim import *
from PIL import Image, ImageDraw


class ImageFile(Scene):
    def construct(self):
        path = Path(tempfile.mkdtemp()) / "logo.png"
        img = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
        ImageDraw.Draw(img).ellipse((8, 8, 72, 72), fill=(240, 180, 20, 255))
        img.save(path)
        logo = ImageMobject(str(path)).scale(2)
        self.play(FadeIn(logo), run_time=0.4)
        self.play(logo.animate.to_corner(UR), run_time=0.6)
