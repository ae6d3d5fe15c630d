# corpus: Ambient bounds=1,2
from manim import *


class Ambient(ThreeDScene):
    def construct(self):
        axes = ThreeDAxes(x_range=[-3, 3], y_range=[-3, 3], z_range=[-2, 2])
        cube = Cube(side_length=1.5, fill_opacity=0.6, fill_color=BLUE)
        self.set_camera_orientation(phi=70 * DEGREES, theta=30 * DEGREES)
        self.add(axes)
        self.play(Create(cube), run_time=0.5)
        self.begin_ambient_camera_rotation(rate=0.7)
        self.wait(0.6)
        self.play(cube.animate.shift(OUT), run_time=0.53)
        self.stop_ambient_camera_rotation()
        self.wait(0.2)
