# corpus: Zoomed bounds=1,2
from manim import *


class Zoomed(ZoomedScene):
    def __init__(self, **kwargs):
        super().__init__(zoom_factor=0.3, zoomed_display_height=2, zoomed_display_width=3, **kwargs)

    def construct(self):
        dot = Dot().shift(UL * 2)
        pixels = np.uint8([[0, 100, 30, 200], [255, 0, 5, 33]])
        image = ImageMobject(pixels).scale(2).shift(DR)
        self.add(image, dot)
        frame = self.zoomed_camera.frame
        frame.move_to(dot)
        self.play(Create(frame), run_time=0.4)
        self.activate_zooming()
        self.play(self.get_zoomed_display_pop_out_animation(), run_time=0.5)
        self.play(frame.animate.shift(RIGHT * 2), dot.animate.set_color(RED), run_time=0.6)
        self.wait(0.2)
