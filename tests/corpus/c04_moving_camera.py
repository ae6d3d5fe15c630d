# corpus: MovingCamera bounds=1,2
from manim import *


class MovingCamera(MovingCameraScene):
    def construct(self):
        self.camera.frame.save_state()
        dots = VGroup(*[Dot([x, (-1) ** x, 0]) for x in range(-4, 5)])
        self.add(dots)
        self.play(self.camera.frame.animate.scale(0.5).move_to(dots[2]), run_time=0.6)
        self.play(self.camera.frame.animate.move_to(dots[6]), run_time=0.7)
        self.play(Restore(self.camera.frame), run_time=0.5)
