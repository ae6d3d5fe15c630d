# corpus: CameraFollow bounds=1
from manim import *


class CameraFollow(MovingCameraScene):
    def construct(self):
        self.camera.frame.save_state()
        path = Circle(radius=2.5)
        dot = Dot(path.point_from_proportion(0), color=ORANGE)
        self.add(path, dot)
        self.play(self.camera.frame.animate.scale(0.4).move_to(dot), run_time=0.5)
        self.camera.frame.add_updater(lambda f: f.move_to(dot.get_center()))
        self.play(MoveAlongPath(dot, path), run_time=1.1, rate_func=linear)
        self.camera.frame.clear_updaters()
        self.play(Restore(self.camera.frame), run_time=0.4)
