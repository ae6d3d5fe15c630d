"""The Cairo camera lends its frames to manim's encoder instead of copying them
(workers/jail/program/frame_pool.py). That the movies stay plain manim's, frame for frame, is
the fidelity corpus's job (test_fidelity.py renders through the same runner); here: frames
are lent, never drawn over while an encoder holds them, and the pool stays small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scenes as S
from manim import BLUE, RIGHT, Camera, Dot, tempconfig
from manim.renderer.cairo_renderer import CairoRenderer

from workers.jail.program import frame_pool
from workers.jail.program.frame_pool import FramePool, pool_of
from workers.jail.program.runner import RenderSpec, plan_scene_full, render_scene

SCENE = """
from manim import *

class Lend(Scene):
    def construct(self):
        square = Square().set_fill(BLUE, 0.5)
        self.play(Create(square), run_time=1)
        self.wait(0.5)
        self.next_section(skip_animations=True)
        self.play(square.animate.shift(RIGHT), run_time=1)
        self.next_section()
        self.play(Rotate(square, PI / 2), run_time=1)
        self.play(FadeOut(square), run_time=0.5)
"""


def spec_for(out: Path, **fields: object) -> RenderSpec:
    return RenderSpec(
        code=SCENE,
        class_name="Lend",
        width=S.WIDTH,
        height=S.HEIGHT,
        fps=S.FPS,
        portrait=False,
        out_dir=str(out),
        **fields,  # type: ignore[arg-type]
    )


def render(
    out: Path, monkeypatch: pytest.MonkeyPatch, **range_: int
) -> tuple[int, int, list[FramePool], Path | None]:
    """Render SCENE through the runner: frames written, get_frame copies, pools made, video."""
    copies = []
    get_frame = CairoRenderer.get_frame
    monkeypatch.setattr(
        CairoRenderer, "get_frame", lambda self: copies.append(1) or get_frame(self)
    )
    before = {id(p) for p in frame_pool._owners.values()}
    output = render_scene(spec_for(out, **range_))
    pools = {id(p): p for p in frame_pool._owners.values() if id(p) not in before}
    return output.frames, len(copies), list(pools.values()), output.video


def most_lent_at_once() -> int:
    """Frames the encoders can hold at once, and the one the camera draws into."""
    from manim import config

    return config.max_inflight_encoders * (config.encoder_queue_size + 1) + 1


def test_a_render_lends_its_frames_instead_of_copying_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the runner renders a scene with a wait and a section it skips
    frames, copies, pools, video = render(tmp_path, monkeypatch)
    # Then every drawn frame went to the encoder without a copy: only the frozen wait and
    # each play's static background were copied
    assert frames == 45  # (1 + 0.5 + 1 + 0.5) s at 15 fps; the skipped section draws none
    assert copies <= 5
    # And the one camera's pool was used, and stays within what the encoders can hold
    assert len(pools) == 1
    assert 2 <= pools[0].size <= most_lent_at_once()
    assert video is not None and len(S.frame_md5s(video)) == frames


def test_plays_the_farm_skips_lend_nothing_and_grow_no_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When only the last play is rendered (the four before are simulated, drawing nothing)
    frames, copies, pools, _ = render(tmp_path, monkeypatch, from_animation=4)
    # Then its frames were lent and the simulated ones cost no array
    assert frames == 8  # 0.5 s at 15 fps
    assert copies <= 1
    assert len(pools) == 1 and pools[0].size <= most_lent_at_once()


def test_a_pool_is_no_part_of_a_plays_hash(tmp_path: Path) -> None:
    # The animation cache keys a play by manim's hash of the scene and camera at its start:
    # a render (frames drawn, lent, a pool made) must hash as the plan (nothing drawn) does
    planned = plan_scene_full(spec_for(tmp_path / "plan", hash_plays=True)).hashes
    drawn = render_scene(spec_for(tmp_path / "render", hash_plays=True)).plays
    assert [p.hash for p in drawn] == [h for h in planned if h is not None]
    assert len(drawn) == 4  # the play in the skipped section has no movie


def test_the_pool_never_hands_out_an_array_an_encoder_holds() -> None:
    pool = FramePool(np.zeros((2, 2, 4), np.uint8))
    first = pool.current
    # Not lent (the writer dropped the frame): the camera draws into it again
    assert pool.for_drawing() == (first, None)
    # Lent: the camera gets another array, and the lent one is reported
    pool.lend(first)
    second, lent = pool.for_drawing()
    assert lent is first and second is not first and pool.size == 2
    # Given back while the second is lent: the first is drawn into again, no third is made
    pool.lend(second)
    pool.give_back(first)
    again, lent = pool.for_drawing()
    assert again is first and lent is second and pool.size == 2


def test_an_array_held_twice_is_free_only_when_both_encoders_are_done() -> None:
    pool = FramePool(np.zeros((2, 2, 4), np.uint8))
    first = pool.current
    pool.lend(first)  # the same frame written twice (render() twice without drawing)
    pool.lend(first)
    second, _ = pool.for_drawing()
    pool.give_back(first)
    pool.lend(second)
    third, lent = pool.for_drawing()
    assert lent is second and third is not first and pool.size == 3
    pool.give_back(first)
    pool.lend(third)
    assert pool.for_drawing()[0] is first


def test_drawing_over_a_lent_frame_leaves_it_to_the_encoder() -> None:
    frame_pool.install()  # as the runner does before any scene
    with tempconfig({"pixel_width": 64, "pixel_height": 36, "background_color": BLUE}):
        camera = Camera()
        pool = pool_of(camera)
        assert pool is not None
        lent = camera.pixel_array
        before = lent.copy()
        pool.lend(lent)
        # When something is drawn without a reset first (no background copy)
        camera.capture_mobjects([Dot(RIGHT, radius=0.5)])
        # Then the lent frame is untouched, and the new one is it with the dot drawn over
        assert np.array_equal(lent, before)
        assert camera.pixel_array is not lent
        assert not np.array_equal(camera.pixel_array, before)
        # And a reset (the start of every frame) takes a free array, not the lent one
        pool.lend(camera.pixel_array)
        pool.give_back(lent)
        camera.reset()
        assert camera.pixel_array is lent
