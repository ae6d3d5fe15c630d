# corpus: Pendulums bounds=1
from manim_physics import *


class Pendulums(SpaceScene):
    def construct(self):
        p = MultiPendulum(RIGHT, LEFT)
        self.add(p)
        self.make_rigid_body(*p.bobs)
        p.start_swinging()
        self.add(TracedPath(p.bobs[-1].get_center, stroke_color=BLUE))
        self.wait(0.8)
        self.play(p.bobs[0].animate.set_color(RED), run_time=0.4)
        self.wait(0.4)
