"""Frame-exact simulation of skipped animations in manim 0.22.0.

When manim renders only a range of animations (``config.from_animation_number`` /
``upto_animation_number``) it still runs ``construct()`` from the top, but it
advances every skipped animation in one step: one ``update_to_time(run_time)``,
one updater call with ``dt=run_time`` and, in the Cairo renderer, the scene clock
moved by the nominal ``run_time``.  A rendered animation instead advances frame by
frame (``np.arange(0, run_time, 1/fps)``) and the Cairo clock moves by whole frames.
Any scene whose state depends on time (dt updaters, run times that are not whole
frames, subcaption timestamps) therefore drifts, and chunks rendered separately do
not stitch into the frames of a full render.

``apply_exact_skipping()`` makes a skipped animation walk the same frame times as a
rendered one while drawing and encoding nothing, so the state at the start of any
rendered range equals the state a full render has at that point.  The patch is
written against manim 0.22.0 only; ``check_manim_version()`` guards the pin.

Plays the *scene itself* skips (a section with ``skip_animations=True``) are left
exactly as plain manim skips them: one step of the nominal run time, no frames.  Only
the plays the farm skips (outside the rendered range) are simulated frame by frame.
``scene_skips(renderer)`` tells which kind the current (or last) play was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import manim
from manim import config
from manim.renderer.cairo_renderer import CairoRenderer
from manim.renderer.opengl_renderer import OpenGLRenderer
from manim.scene.scene import Scene

__all__ = [
    "PINNED_MANIM_VERSION",
    "apply_exact_skipping",
    "check_manim_version",
    "farm_skips",
    "frames_of",
    "on_play_start",
    "scene_skips",
    "skip_plays",
]

PINNED_MANIM_VERSION = "0.22.0"

_FRAMES_ATTR = "_farm_frames"
_PLAY_START_ATTR = "_farm_play_start_time"
_SCENE_SKIP_ATTR = "_farm_scene_skips"
_SKIP_PLAYS_ATTR = "_farm_skip_plays"
_PLAY_HOOK_ATTR = "_farm_play_hook"
_applied = False


def check_manim_version() -> None:
    """Raise RuntimeError unless the installed manim is the version the patch targets."""
    if manim.__version__ != PINNED_MANIM_VERSION:
        raise RuntimeError(
            f"the farm's manim patch was written against manim {PINNED_MANIM_VERSION}, "
            f"found {manim.__version__}; re-verify the patch before changing the pin"
        )


def frames_of(renderer: CairoRenderer | OpenGLRenderer) -> int:
    """Return how many video frames the renderer has produced or simulated so far."""
    return int(getattr(renderer, _FRAMES_ATTR, 0))


def scene_skips(renderer: object) -> bool:
    """Whether the scene itself skips the current play (or skipped the last one).

    True in a section with ``skip_animations=True``: plain manim skips such a play too,
    renders no frame for it and, until the next play starts, drops ``add_sound``.
    """
    return bool(getattr(renderer, _SCENE_SKIP_ATTR, False))


def farm_skips(renderer: CairoRenderer | OpenGLRenderer) -> bool:
    """Whether the current play is skipped by the farm only (outside the rendered range)."""
    return bool(renderer.skip_animations) and not scene_skips(renderer)


def skip_plays(renderer: object, indices: Iterable[int]) -> None:
    """Also skip (and simulate) these plays inside the rendered range: rendered elsewhere."""
    setattr(renderer, _SKIP_PLAYS_ATTR, frozenset(indices))


def on_play_start(renderer: object, hook: Callable[[Scene], None] | None) -> None:
    """Call ``hook(scene)`` at the start of every play, once its animations are compiled.

    The scene's state then is what manim hashes to name the play's partial movie, and manim
    has not yet decided whether to draw it: the hook may set ``renderer.skip_animations`` to
    have the play simulated instead (as manim does with a play its own cache holds).
    """
    setattr(renderer, _PLAY_HOOK_ATTR, hook)


def _count_frames(renderer: object, n: int) -> None:
    setattr(renderer, _FRAMES_ATTR, getattr(renderer, _FRAMES_ATTR, 0) + n)


def apply_exact_skipping() -> None:
    """Patch manim so skipped animations advance exactly as rendered ones; idempotent."""
    global _applied
    if _applied:
        return
    check_manim_version()
    _patch_scene()
    _patch_skipping_status(CairoRenderer)
    _patch_skipping_status(OpenGLRenderer)
    _patch_cairo()
    _patch_opengl()
    _applied = True


def _patch_skipping_status(renderer_class: type[CairoRenderer] | type[OpenGLRenderer]) -> None:
    orig = renderer_class.update_skipping_status

    # Why: manim decides at the start of every play whether to skip it, for the
    # section's skip_animations as much as for the range; remember which, so the
    # scene's own skips stay plain manim's and only the farm's are simulated.
    def update_skipping_status(self: Any) -> None:
        setattr(self, _SCENE_SKIP_ATTR, bool(self.file_writer.sections[-1].skip_animations))
        orig(self)
        if self.num_plays in getattr(self, _SKIP_PLAYS_ATTR, ()):
            self.skip_animations = True

    renderer_class.update_skipping_status = update_skipping_status  # type: ignore[method-assign]


def _patch_scene() -> None:
    orig_get_time_progression = Scene.get_time_progression
    orig_play_internal = Scene.play_internal
    orig_begin_animations = Scene.begin_animations
    orig_compile_animation_data = Scene.compile_animation_data

    # Why: a skipped animation gets the single time [run_time]; updaters then see one
    # dt=run_time step instead of the per-frame dts a rendered animation sees, and
    # frame-count-dependent state (dt updaters, stop conditions) diverges.
    # The progress bar is disabled by the runner, so forcing per-frame times costs nothing.
    def get_time_progression(
        self: Scene,
        run_time: float,
        description: str,
        n_iterations: int | None = None,
        override_skip_animations: bool = False,
    ) -> Any:
        override = override_skip_animations or farm_skips(self.renderer)
        return orig_get_time_progression(
            self, run_time, description, n_iterations, override_skip_animations=override
        )

    # Why: a rendered play ends with update_mobjects(0) ("if not skip_animations"),
    # a skipped one does not; updaters with side effects must run the same number
    # of times in both.
    def play_internal(self: Scene, skip_rendering: bool = False) -> None:
        orig_play_internal(self, skip_rendering)
        if farm_skips(self.renderer):
            self.update_mobjects(0)

    # Why: CairoRenderer.play adds the nominal run time to the clock up front when
    # it skips, whereas rendering advances it frame by frame (whole frames).  The
    # patched add_frame advances it per simulated frame, so undo the up-front jump
    # here: begin_animations is the first hook after it and before any user code
    # (animation.begin, updaters) can read scene.time.
    def begin_animations(self: Scene) -> None:
        renderer = self.renderer
        start = getattr(renderer, _PLAY_START_ATTR, None)
        if start is not None:
            if isinstance(renderer, CairoRenderer) and farm_skips(renderer):
                renderer.time = start
            setattr(renderer, _PLAY_START_ATTR, None)
        orig_begin_animations(self)

    # Why: CairoRenderer.play compiles the play, then checks skip_animations (manim's own cache
    # hit sets it there): the one point where a play's hash is known and its drawing not begun.
    def compile_animation_data(self: Scene, *animations: Any, **play_kwargs: Any) -> Any:
        compiled = orig_compile_animation_data(self, *animations, **play_kwargs)
        hook = getattr(self.renderer, _PLAY_HOOK_ATTR, None)
        if hook is not None:
            hook(self)
        return compiled

    Scene.get_time_progression = get_time_progression  # type: ignore[method-assign]
    Scene.play_internal = play_internal  # type: ignore[method-assign]
    Scene.begin_animations = begin_animations  # type: ignore[method-assign]
    Scene.compile_animation_data = compile_animation_data  # type: ignore[method-assign]


def _patch_cairo() -> None:
    orig_play = CairoRenderer.play
    orig_add_frame = CairoRenderer.add_frame
    orig_update_frame = CairoRenderer.update_frame
    orig_save_static = CairoRenderer.save_static_frame_data

    # Why: remember the clock before the play so begin_animations can undo the
    # up-front "time += scene.duration" of a skipped play (see above).
    def play(self: CairoRenderer, scene: Scene, *args: Any, **kwargs: Any) -> None:
        setattr(self, _PLAY_START_ATTR, self.time)
        try:
            orig_play(self, scene, *args, **kwargs)
        finally:
            setattr(self, _PLAY_START_ATTR, None)

    # Why: while skipping, add_frame returns without touching the clock; rendering
    # adds num_frames * (1/fps) per call.  Do the same float arithmetic so scene.time
    # (seen by updaters and subcaptions) is bit-identical, and count frames for plans.
    # This covers per-frame render() calls and a frozen wait's int(duration/dt) frames.
    def add_frame(self: CairoRenderer, frame: Any, num_frames: int = 1) -> None:
        if scene_skips(self) and self.skip_animations:
            return  # plain manim's skip: no frame, the clock moved up front
        _count_frames(self, num_frames)
        if self.skip_animations:
            dt = 1 / self.camera.frame_rate
            self.time += num_frames * dt
            return
        orig_add_frame(self, frame, num_frames)

    # Why: drawing a frame nobody encodes is the whole cost of a skipped animation
    # (render() and a frozen wait call update_frame even while skipping); drawing
    # has no effect on scene state, so skip it.
    def update_frame(
        self: CairoRenderer,
        scene: Scene,
        mobjects: Iterable[Any] | None = None,
        include_submobjects: bool = True,
        ignore_skipping: bool = True,
        **kwargs: Any,
    ) -> None:
        if self.skip_animations:
            return
        orig_update_frame(self, scene, mobjects, include_submobjects, ignore_skipping, **kwargs)

    # Why: same as update_frame: the static background of a skipped play is never used.
    def save_static_frame_data(
        self: CairoRenderer, scene: Scene, static_mobjects: Iterable[Any]
    ) -> Any:
        if self.skip_animations:
            self.static_image = None
            return None
        return orig_save_static(self, scene, static_mobjects)

    CairoRenderer.play = play  # type: ignore[method-assign]
    CairoRenderer.add_frame = add_frame  # type: ignore[method-assign]
    CairoRenderer.update_frame = update_frame  # type: ignore[method-assign]
    CairoRenderer.save_static_frame_data = save_static_frame_data  # type: ignore[method-assign]


def _patch_opengl() -> None:
    # OpenGLRenderer.play advances its clock by the nominal duration whether or not it
    # skips, so only the per-frame progression (Scene patches above) and drawing matter.
    orig_play: Callable[..., None] = OpenGLRenderer.play
    orig_render = OpenGLRenderer.render
    orig_update_frame = OpenGLRenderer.update_frame

    # Why: render() draws the frame before checking skip_animations; a skipped
    # frame only needs counting.
    def render(
        self: OpenGLRenderer, scene: Scene, frame_offset: float, moving_mobjects: Any
    ) -> None:
        if not (scene_skips(self) and self.skip_animations):
            _count_frames(self, 1)
        if self.skip_animations:
            return
        orig_render(self, scene, frame_offset, moving_mobjects)

    # Why: a frozen wait draws once even when skipped; nothing uses that frame.
    def update_frame(self: OpenGLRenderer, scene: Scene) -> None:
        if self.skip_animations:
            return
        orig_update_frame(self, scene)

    # Why: count the int(fps * duration) frames a frozen wait writes, for plans.
    def play(self: OpenGLRenderer, scene: Scene, *args: Any, **kwargs: Any) -> None:
        orig_play(self, scene, *args, **kwargs)
        if scene.is_current_animation_frozen_frame() and not (
            scene_skips(self) and self.skip_animations
        ):
            _count_frames(self, int(config.frame_rate * scene.duration))

    OpenGLRenderer.render = render  # type: ignore[method-assign]
    OpenGLRenderer.update_frame = update_frame  # type: ignore[method-assign]
    OpenGLRenderer.play = play  # type: ignore[method-assign]
