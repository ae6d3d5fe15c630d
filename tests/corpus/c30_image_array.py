# corpus: ImageArray bounds=1
from manim import *


class ImageArray(Scene):
    def construct(self):
        ramp = np.linspace(0, 255, 64, dtype=np.uint8)
        pixels = np.stack(
            [
                np.tile(ramp, (48, 1)),
                np.tile(ramp[::-1], (48, 1)),
                np.full((48, 64), 120, np.uint8),
            ],
            axis=-1,
        )
        image = ImageMobject(pixels).scale(3)
        self.play(FadeIn(image), run_time=0.5)
        self.play(image.animate.rotate(PI / 8).shift(RIGHT), run_time=0.6)
        self.wait(0.2)
