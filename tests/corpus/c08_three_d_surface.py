# corpus: SurfaceScene bounds=1
from manim import *


class SurfaceScene(ThreeDScene):
    def construct(self):
        surface = Surface(
            lambda u, v: np.array([u, v, 0.4 * np.sin(u) * np.cos(v)]),
            u_range=[-2, 2],
            v_range=[-2, 2],
            resolution=(8, 8),
        )
        self.set_camera_orientation(phi=60 * DEGREES, theta=-45 * DEGREES)
        self.play(Create(surface), run_time=0.6)
        self.move_camera(phi=45 * DEGREES, theta=20 * DEGREES, run_time=0.7)
        self.wait(0.2)
