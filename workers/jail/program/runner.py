"""Run one user scene inside the render child: plan its animations or render a range.

This is the jail's program (``workers/jail/program``): inside the jail it runs as
``python -m workers.jail.program.runner plan|render|serve SPEC RESULT`` and imports nothing
of the project but its sibling ``manim_patch`` (tests/test_layout.py checks), because only
this directory is bound into the jail. Its report (RESULT) holds numbers and the scene's
error text only; the outputs are always ``out/video.mp4`` and ``out/captions.srt``, names the
worker chose, never paths the scene could steer. The worker treats the report as untrusted.

Range convention: ``from_animation`` / ``upto_animation`` select the half-open range
``[from, upto)`` of 0-based ``play()`` / ``wait()`` calls (``None`` = scene start /
scene end).  That maps to manim's inclusive ``upto_animation_number = upto - 1``.
The video of a range is exactly the partial movies of those animations, and thanks
to ``manim_patch`` the animations before it are simulated frame by frame,
so ranges ``[0, a)``, ``[a, b)``, ``[b, None)`` concatenated (``-c copy``) decode to
the same frames as one full render.

Subcaptions are assigned to the animation they were added during (or, for
``add_subcaption`` between plays, to the preceding animation; before the first
play, to animation 0); a range's ``.srt`` holds exactly its own, with absolute
scene times, so merging chunk ``.srt`` files reproduces the full render's.

Sounds are assigned the same way and never enter a range's video: each
``add_sound`` that plain manim would keep (it drops those made while the scene's own
section skips) is decoded exactly as manim decodes it (gain applied), written under
``sound-NNNN.wav`` with a name the runner picks, and listed with its absolute scene time, so
the stitch can build the whole scene's one audio track (``audio_mix``, run by the media jail).

Plays the scene itself skips (``next_section(skip_animations=True)``) render no frames,
in a plan as in a render: their planned duration is 0.
"""

from __future__ import annotations

import atexit
import json
import linecache
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import monotonic
from typing import Any

from . import handoff
from .ready import signal_started

# Frame dimensions in manim units: manim's default 16:9 frame, 8 units tall.
_FRAME_SHORT_SIDE = 8.0
_FRAME_LONG_SIDE = 8.0 * 16.0 / 9.0
# The user's module is executed under this name, so tracebacks read "scene.py", line N.
USER_MODULE = "scene"
USER_FILENAME = "scene.py"
# manim modules whose failures are the farm's (encoding, writing files), not the scene's.
_ENCODING_FILES = frozenset({"scene_file_writer.py", "video_segment_encoder.py"})
# Default random seed of every scene, so chunks rendered in different processes agree
# (plain manim seeds nothing; the farm matches `manim --seed 0`). A job may choose another.
SCENE_SEED = 0
# libx264's thread count, fixed. Its output depends on it (the same frames encoded with 1, 2, 3
# and 8 threads decode to four different sets of frames), and left alone it counts the CPUs of
# the node, not the pod's limit. Fixed, a job's movies are the same bytes on every node, so a
# movie from the animation cache is the one this node would have drawn. It is in every cache
# key through the program's fingerprint (farm.anim_cache.environment).
ENCODER_THREADS = 2
# Attributes manim's cairo camera creates when it first draws (not scene state).
_CAMERA_DRAW_CACHES = ("display_funcs", "background_colored_vmobject_displayer", "rotation_matrix")
# Sound files a range hands back, under its out_dir.
SOUND_PREFIX = "sound-"

__all__ = [
    "RenderOutput",
    "RenderSpec",
    "SceneError",
    "main",
    "plan_scene",
    "render_scene",
]


@dataclass(frozen=True)
class RenderSpec:
    """What to render: the user's module, the scene class and the output format."""

    code: str
    class_name: str
    width: int
    height: int
    fps: int
    portrait: bool
    out_dir: str
    from_animation: int | None = None
    upto_animation: int | None = None
    renderer: str = "cairo"
    max_inflight_encoders: int | None = None
    # The worker-fetched assets the scene's web requests are answered from (read-only), and
    # where the URLs it asked for that are not there are recorded (assets_shim.py).
    assets_dir: str | None = None
    assets_missing: str | None = None
    seed: int = SCENE_SEED
    # The animation cache: report manim's hash of each play in range (cairo only), and skip
    # (simulating them) the plays of the range whose movies are cached already.
    hash_plays: bool = False
    skip_plays: tuple[int, ...] = ()
    # Whether a range reports its own subcaptions and sounds. The farm takes them from the plan
    # (which always reports the whole scene's), so a cached play's are never lost.
    range_media: bool = True
    # A plan that renders while it plans (cairo): it draws the plays whose hash is not in
    # cached_hashes until it has spent this many seconds drawing, then simulates the rest, and
    # hands back each drawn play's movie (hashed, for the cache, even without hash_plays).
    # None: a plan draws nothing.
    render_budget_seconds: float | None = None
    cached_hashes: tuple[str, ...] = ()
    # A plan that leaves animations for chunks offers its plan to the worker before it ends
    # (handoff.py) and draws the range the worker hands back, in this process.
    handoff: bool = False
    # A plan pass beside others of its job (the plan and its helpers): it draws only the plays
    # it claims as it reaches them (handoff.claim), and simulates those another pass claimed.
    claim_plays: bool = False
    # A helper pass: it does not claim a static wait (one frame drawn, then repeated), and
    # simulates it. Its plan draws it for one frame and the encoder's repeats; a helper's
    # movie of it would cost the job a movie to store, wait for and join.
    leave_static_waits: bool = False
    # Movies of plays in range that an earlier pass of this process drew (index, path): the
    # range's video joins them in their places instead of drawing them again.
    joined_movies: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Sound:
    """One ``add_sound`` of the scene: a decoded WAV (gain applied) and where it plays."""

    file: str  # relative to out_dir
    time: float  # absolute scene time, seconds
    gain_to_background: float | None = None


@dataclass(frozen=True)
class PlayMovie:
    """One rendered play's own movie (manim's partial movie file), for the animation cache."""

    index: int
    file: str  # relative to out_dir
    frames: int
    hash: str | None


@dataclass(frozen=True)
class RenderOutput:
    """Files and counts of one rendered range; paths are under the spec's out_dir."""

    video: str | None
    srt: str | None
    frames: int
    animations: int
    sounds: list[Sound] = field(default_factory=list)
    plays: list[PlayMovie] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """Each play's duration in the video (0 for plays the scene skips) and, if asked, hash;
    the whole scene's sounds and subcaptions (an .srt under out_dir, or None); and, for a plan
    that renders while it plans, what it drew."""

    durations: list[float]
    hashes: list[str | None]
    sounds: list[Sound] = field(default_factory=list)
    srt: str | None = None
    rendered: RenderOutput | None = None
    drawing_seconds: float = 0.0  # of the plan's time, spent drawing (the rest simulates)


class SceneError(Exception):
    """The user's scene failed; the message is the scene's own error, fit for the user."""


def plan_scene(spec: RenderSpec) -> list[float]:
    """Simulate the whole scene without drawing; return each animation's duration in seconds.

    A duration is the animation's length in the rendered video: whole frames / fps
    (a run time that is not a whole number of frames rounds up, as manim renders it).
    """
    return plan_scene_full(spec).durations


def plan_scene_full(spec: RenderSpec) -> Plan:
    """``plan_scene`` plus each play's manim hash when the spec asks for them."""
    run = _run(spec, plan=True)
    if run.play_frames and all(run.play_scene_skipped):
        raise SceneError(
            "Every animation of the scene is in a section with skip_animations=True: "
            "there is nothing to render"
        )
    return Plan(
        [n / spec.fps for n in run.play_frames],
        [run.play_hashes.get(i) for i in range(len(run.play_frames))],
        run.sounds,
        str(run.srt) if run.srt else None,
        run.output() if _renders_while_planning(spec) else None,
        run.drawing_seconds,
    )


def _renders_while_planning(spec: RenderSpec) -> bool:
    return spec.render_budget_seconds is not None and spec.renderer == "cairo"


def render_scene(spec: RenderSpec) -> RenderOutput:
    """Render the spec's range of animations to an mp4 (and .srt) under out_dir."""
    return _run(spec, plan=False).output()


# --- running the scene -----------------------------------------------------------


@dataclass
class _RunResult:
    play_frames: list[int]
    play_rendered: list[bool]
    play_scene_skipped: list[bool]
    play_hashes: dict[int, str]
    video: Path | None = None
    srt: Path | None = None
    sounds: list[Sound] = field(default_factory=list)
    plays: list[PlayMovie] = field(default_factory=list)
    drawing_seconds: float = 0.0

    def output(self) -> RenderOutput:
        rendered = [n for n, r in zip(self.play_frames, self.play_rendered, strict=True) if r]
        return RenderOutput(
            video=str(self.video) if self.video else None,
            srt=str(self.srt) if self.srt else None,
            frames=sum(rendered),
            animations=len(rendered),
            sounds=self.sounds,
            plays=self.plays,
        )


def _patch_manim() -> None:
    """The farm's patches of manim: exact skipping, and frames lent to the encoder."""
    from . import frame_pool, manim_patch

    manim_patch.apply_exact_skipping()
    frame_pool.install()


def _validate(spec: RenderSpec) -> None:
    if spec.width <= 0 or spec.height <= 0 or spec.fps <= 0:
        raise ValueError(f"width, height and fps must be positive: {spec}")
    if spec.renderer not in ("cairo", "opengl"):
        raise ValueError(f"renderer must be 'cairo' or 'opengl', not {spec.renderer!r}")
    start = spec.from_animation or 0
    if start < 0:
        raise ValueError(f"from_animation must be >= 0, got {spec.from_animation}")
    if spec.upto_animation is not None and spec.upto_animation <= start:
        raise ValueError(
            f"upto_animation must be > from_animation, got [{start}, {spec.upto_animation})"
        )


def _run(spec: RenderSpec, *, plan: bool) -> _RunResult:
    _validate(spec)
    from manim import tempconfig

    from . import assets_shim

    _patch_manim()
    if spec.assets_dir is not None:
        # Plan: stand-ins for missing URLs, so one pass finds them all (the worker fetches them
        # and plans again); a chunk that asks for one the plan did not fails instead.
        assets_shim.install(spec.assets_dir, spec.assets_missing, placeholders=plan)
    out_dir = Path(spec.out_dir).resolve()
    with tempconfig({}), _user_source_registered(spec.code):
        draws = not plan or _renders_while_planning(spec)
        _configure(spec, out_dir, draws=draws)
        module = _exec_user_module(spec.code)
        # The user's module may set config at import (background colour is common);
        # what the farm promised the job (size, fps, range, output place) wins.
        _configure(spec, out_dir, draws=draws)
        scene_class = _find_scene_class(module, spec.class_name)
        return _render_scene_class(scene_class, spec, plan=plan)


def _configure(spec: RenderSpec, out_dir: Path, *, draws: bool) -> None:
    from manim import config

    config.renderer = spec.renderer
    config.pixel_width = spec.width
    config.pixel_height = spec.height
    config.frame_rate = spec.fps
    # Why: -r W,H does not change manim's frame; a 9:16 frame must swap the 16:9
    # frame's sides too, or the sides of a landscape-composed scene are cropped.
    if spec.portrait:
        config.frame_width, config.frame_height = _FRAME_SHORT_SIDE, _FRAME_LONG_SIDE
    else:
        config.frame_width, config.frame_height = _FRAME_LONG_SIDE, _FRAME_SHORT_SIDE
    config.media_dir = str(out_dir)
    config.video_dir = str(out_dir / "videos")
    config.partial_movie_dir = str(out_dir / "partial_movies")
    config.images_dir = str(out_dir / "images")
    config.tex_dir = str(out_dir / "Tex")
    config.text_dir = str(out_dir / "texts")
    config.log_dir = str(out_dir / "logs")
    config.assets_dir = str(out_dir)
    config.input_file = ""
    config.output_file = USER_MODULE
    config.log_to_file = False
    config.disable_caching = True
    config.disable_caching_warning = True
    config.verbosity = "WARNING"
    config.progress_bar = "none"
    config.preview = False
    config.show_in_file_browser = False
    config.live_preview = False
    config.enable_gui = False
    config.write_all = False
    config.save_sections = False
    config.transparent = False
    config.seed = spec.seed
    config.video_encoder_options = {"threads": str(ENCODER_THREADS)}
    if spec.max_inflight_encoders:  # None or 0: manim's own default
        config.max_inflight_encoders = spec.max_inflight_encoders
    if not draws:
        # Nothing is encoded or written; every animation is skipped (and simulated).
        config.dry_run = True
        config.format = "auto"
        config.from_animation_number = sys.maxsize
        config.upto_animation_number = -1
    else:
        config.dry_run = False
        # An explicit mp4 (not "auto", which would fall back to a PNG for a scene
        # without animations).
        config.format = "mp4"
        config.from_animation_number = spec.from_animation or 0
        config.upto_animation_number = (
            -1 if spec.upto_animation is None else spec.upto_animation - 1
        )


def _render_scene_class(scene_class: type[Any], spec: RenderSpec, *, plan: bool) -> _RunResult:
    manager_class = _farm_manager_class()
    try:
        scene = scene_class()
        manager = manager_class(scene, spec, plan)
        manager.render()
    except (Exception, SystemExit) as exc:
        if isinstance(exc, SceneError):
            raise
        if not _is_scene_fault(exc):
            raise
        raise SceneError(_user_traceback(exc)) from None
    run = _RunResult(
        manager.play_frames,
        manager.play_rendered,
        manager.play_scene_skipped,
        manager.play_hashes,
    )
    file_writer = manager.file_writer
    run.sounds = manager.sounds
    run.drawing_seconds = manager.drawing_seconds
    if plan and not _renders_while_planning(spec):
        if file_writer.subcaptions:
            import srt

            run.srt = Path(spec.out_dir).resolve() / "captions.srt"
            run.srt.parent.mkdir(parents=True, exist_ok=True)
            run.srt.write_text(srt.compose(file_writer.subcaptions), encoding="utf-8")
        return run
    movie = Path(file_writer.movie_file_path)
    run.video = movie if movie.is_file() else None
    srt_path = file_writer.output_plan.subcaption_file
    run.srt = Path(srt_path) if srt_path is not None and Path(srt_path).is_file() else None
    out_dir = Path(spec.out_dir).resolve()
    for index, partial in enumerate(file_writer.partial_movie_files):
        if partial is not None and manager.play_rendered[index]:
            run.plays.append(
                PlayMovie(
                    index,
                    str(Path(partial).resolve().relative_to(out_dir)),
                    manager.play_frames[index],
                    manager.play_hashes.get(index),
                )
            )
    return run


def _farm_manager_class() -> type[Any]:
    """Build the Manager subclass lazily, so importing this module does not import manim."""
    from manim.manager import Manager

    from .manim_patch import frames_of, on_play_start, scene_skips, skip_plays

    class FarmManager(Manager[Any]):
        """Records per-animation frames, and which animation owns each subcaption and sound."""

        def __init__(self, scene: Any, spec: RenderSpec, plan: bool) -> None:
            super().__init__(scene)
            self.range_start, self.range_end = spec.from_animation or 0, spec.upto_animation
            # None: record no sounds nor subcaptions (a range whose plan reports them)
            media = plan or spec.range_media
            self.out_dir = Path(spec.out_dir).resolve() if media else None
            self.play_frames: list[int] = []
            self.play_rendered: list[bool] = []
            self.play_scene_skipped: list[bool] = []
            self.play_hashes: dict[int, str] = {}
            self.subcaption_owners: list[int] = []
            self.sounds: list[Sound] = []
            skip_plays(self.renderer, spec.skip_plays)
            # A plan that renders while it plans: its drawing budget and what it need not draw.
            self.budget = spec.render_budget_seconds if plan else None
            self.cached = frozenset(spec.cached_hashes)
            self.hash_all = spec.hash_plays
            self.claiming = spec.claim_plays and plan
            self.leaves_static_waits = spec.leave_static_waits
            self.joined_movies = spec.joined_movies
            self.drawing_seconds = 0.0
            if spec.renderer == "cairo" and (spec.hash_plays or self.budget is not None):
                on_play_start(self.renderer, self._start_play)

        def _start_play(self, scene: Any) -> None:
            """Hash the play starting now; a plan that renders simulates it instead of drawing
            it when the owner's cache has its movie, the plan's drawing budget is spent, or
            another pass of the job claimed it.

            Hashing is costly (every mobject's state): a plan hashes every play only when asked
            (the owner's cache has movies to look up), else only the plays it draws."""
            drawing = self.budget is not None and not self.renderer.skip_animations
            # A static wait is one frame drawn and repeated: cheaper to draw past the budget
            # than to hand to a chunk (a scene's closing self.wait() would otherwise be one).
            spent = (
                drawing
                and self.drawing_seconds >= (self.budget or 0.0)
                and not scene.is_current_animation_frozen_frame()
            )
            play_hash = self._hash_play(scene) if self.hash_all else None
            if not drawing:
                return
            if (
                spent
                or play_hash in self.cached
                or (self.claiming and self._owns(self.num_plays) and not self._draws(scene))
            ):
                self.renderer.skip_animations = True
            elif play_hash is None:
                self._hash_play(scene)  # it draws this play: its movie goes into the cache

        def _draws(self, scene: Any) -> bool:
            """Whether this claiming pass draws the play starting now (nobody claimed it
            before, and it is not a static wait this pass leaves to its plan)."""
            if self.leaves_static_waits and scene.is_current_animation_frozen_frame():
                return False  # unclaimed: the plan claims it as it reaches it
            return self._claim(self.num_plays)

        def _claim(self, index: int) -> bool:
            """Whether this pass draws play ``index``; encodes as many movies at once as the
            worker's answer allows from now on.

            Why: the passes of a job on one node share its CPUs. A pass that keeps more
            movies encoding than its share draws ahead of its encoders, claims more than it
            can finish, and ends last; at one encoder each, the passes end together."""
            draws = handoff.claim(index)
            writer = self.file_writer
            if handoff.encoders is not None and (
                writer.settings.max_inflight_encoders != handoff.encoders
            ):
                writer.settings = replace(writer.settings, max_inflight_encoders=handoff.encoders)
            return draws

        def _hash_play(self, scene: Any) -> str | None:
            """manim's own partial-movie hash of the play starting now (cairo, as manim does),
            computed by play_hash.py (the same digest, faster)."""
            index = self.num_plays
            if scene_skips(self.renderer) or not self._owns(index):
                return None
            from . import play_hash

            camera = self.camera
            # Why: the camera keeps caches it builds on its first draw; a plan (nothing drawn)
            # and a render must hash the same state, so hash without them.
            transient = {
                k: camera.__dict__.pop(k) for k in _CAMERA_DRAW_CACHES if k in vars(camera)
            }
            try:
                self.play_hashes[index] = play_hash.get_hash_from_play_call(
                    scene,
                    camera,
                    scene.animations,
                    scene.mobjects,
                    backend="cairo",
                    # Why: a plan has no encoder (dry run); the farm's encoder settings are
                    # fixed and go into the cache key with the size, fps and versions instead.
                    encoder_fingerprint="farm",
                    renderer_state=(),
                )
            finally:
                camera.__dict__.update(transient)
            return self.play_hashes[index]

        def _owns(self, owner: int) -> bool:
            return self.range_start <= owner and (self.range_end is None or owner < self.range_end)

        def play(self, *args: Any, **kwargs: Any) -> None:
            before, started = frames_of(self.renderer), monotonic()
            super().play(*args, **kwargs)
            self.play_frames.append(frames_of(self.renderer) - before)
            self.play_rendered.append(not self.renderer.skip_animations)
            if self.play_rendered[-1]:
                self.drawing_seconds += monotonic() - started
            self.play_scene_skipped.append(scene_skips(self.renderer))

        def add_sound(
            self,
            sound_file: str,
            time_offset: float = 0,
            gain: float | None = None,
            **kwargs: Any,
        ) -> None:
            # Why: plain manim drops a sound while it skips; of the farm's skips only the
            # scene's own (its section's) are plain manim's, the range's are not.
            if self.skip_animations and scene_skips(self.renderer):
                return
            # Owned like a subcaption; other ranges report the sound, not this one.
            if self.out_dir is None or not self._owns(max(self.num_plays - 1, 0)):
                return
            writer = self.file_writer
            captured: list[tuple[Any, float | None, float | None]] = []

            def capture(
                segment: Any, time: float | None = None, gain_to_background: float | None = None
            ) -> None:
                if time is not None and time < 0:
                    raise ValueError("Adding sound at timestamp < 0")
                captured.append((segment, time, gain_to_background))

            # Why: manim's own add_sound finds, converts and applies the gain exactly as a
            # plain render does; only the mixing into the track is left for the stitch.
            writer.add_audio_segment = capture  # type: ignore[method-assign,assignment]
            try:
                writer.add_sound(sound_file, self.time + time_offset, gain, **kwargs)
            finally:
                del writer.add_audio_segment
            for segment, time, to_background in captured:
                relative = f"{SOUND_PREFIX}{len(self.sounds):04d}.wav"
                target = self.out_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                segment.export(str(target), format="wav").close()
                self.sounds.append(
                    Sound(relative, float(self.time if time is None else time), to_background)
                )

        def add_subcaption(self, content: str, duration: float = 1, offset: float = 0) -> None:
            super().add_subcaption(content, duration, offset)
            # Why: during play k (play(subcaption=...)) num_plays is already k+1;
            # between plays k and k+1 it is k+1 too; before the first play it is 0.
            self.subcaption_owners.append(max(self.num_plays - 1, 0))

        def post_construct(self) -> None:
            if self.num_plays == 0:
                raise SceneError(
                    "The scene has no animations: construct() called neither "
                    "self.play() nor self.wait(). Plain manim saves such a still scene as "
                    "a PNG image; the farm renders videos only: end construct() with "
                    "self.wait() for a one-second video of the final frame"
                )
            subs = self.file_writer.subcaptions
            self.file_writer.subcaptions = [
                s
                for s, owner in zip(subs, self.subcaption_owners, strict=True)
                if self.out_dir is not None and self._owns(owner)
            ]
            # Why: manim joins its partial movies, one entry per play (None for a skipped
            # one), when the scene finishes; a movie an earlier pass drew takes its place.
            movies = self.file_writer.partial_movie_files
            for index, path in self.joined_movies:
                if index < len(movies) and movies[index] is None:
                    movies[index] = path
            super().post_construct()

    return FarmManager


# --- the user's module -------------------------------------------------------------


@contextmanager
def _user_source_registered(code: str) -> Iterator[None]:
    """Let tracebacks show the user's source lines for "scene.py" (it is not on disk)."""
    # mtime None: linecache.checkcache keeps the entry instead of stat()ing the file.
    linecache.cache[USER_FILENAME] = (len(code), None, code.splitlines(True), USER_FILENAME)
    try:
        yield
    finally:
        linecache.cache.pop(USER_FILENAME, None)


def _exec_user_module(code: str) -> types.ModuleType:
    try:
        compiled = compile(code, USER_FILENAME, "exec")
    except SyntaxError as exc:
        raise SceneError(_format_exception_only(exc)) from None
    module = types.ModuleType(USER_MODULE)
    module.__file__ = USER_FILENAME
    # Why: dataclasses, pickling and inspect look the module up by name.
    sys.modules[USER_MODULE] = module
    try:
        exec(compiled, module.__dict__)
    except (Exception, SystemExit) as exc:
        raise SceneError(_user_traceback(exc)) from None
    return module


def _find_scene_class(module: types.ModuleType, class_name: str) -> type[Any]:
    from manim import Scene

    available = sorted(
        name
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, Scene) and obj.__module__ == USER_MODULE
    )
    found = vars(module).get(class_name)
    if found is None:
        listing = ", ".join(available) if available else "none"
        raise SceneError(
            f"Scene class {class_name!r} not found in the submitted code "
            f"(Scene subclasses defined there: {listing})"
        )
    if not (isinstance(found, type) and issubclass(found, Scene)):
        raise SceneError(f"{class_name!r} in the submitted code is not a Scene subclass")
    return found


def _is_scene_fault(exc: BaseException) -> bool:
    """Whether an exception is the user's scene failing rather than the farm or the host.

    The scene's code must be on the stack, and the error must not come from manim's
    video encoding (a broken encoder or a full disk surfaces in the user's self.play()).
    """
    if isinstance(exc, MemoryError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not any(f.filename == USER_FILENAME for f in frames):
        return False
    innermost = Path(frames[-1].filename)
    return not (innermost.parent.name == "scene" and innermost.name in _ENCODING_FILES)


def _user_traceback(exc: BaseException) -> str:
    """The traceback a user should see: their own frames and the exception line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == USER_FILENAME]
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.StackSummary.from_list(frames).format())
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines).rstrip("\n")


def _format_exception_only(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")


# --- command line ------------------------------------------------------------------


def _spec_from_json(data: dict[str, Any]) -> RenderSpec:
    if "skip_plays" in data:
        data = {**data, "skip_plays": tuple(int(i) for i in data["skip_plays"])}
    return RenderSpec(**data)


def _serve() -> str:
    """Warm up (import manim, patch it), then wait for the one command this process will run.

    The worker writes the spec file, then sends ``plan`` or ``render`` on stdin; stdin is
    closed before any user code runs, so the scene can read nothing from it.
    """
    import manim  # noqa: F401  (the expensive part: about a second)

    _patch_manim()
    command = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return command


# The outputs' names under out_dir: chosen by the worker, never reported by the scene.
VIDEO_NAME = "video.mp4"
CAPTIONS_NAME = "captions.srt"
# The video of the range a plan draws after its hand-off.
HEAD_NAME = "head.mp4"


# Each reported sound i is out_dir/sound-{i:04d}.wav; each reported play movie (animation
# cache) is out_dir/play-{index:04d}.mp4 (flat: the worker copies out names, not trees).
PLAY_PREFIX = "play-"


def _sounds_report(sounds: list[Sound]) -> list[list[float | None]]:
    """[time, gain_to_background] of each sound, in call order (file i is sound-{i:04d}.wav)."""
    return [[s.time, s.gain_to_background] for s in sounds]


def _publish_plan(spec: RenderSpec, plan: Plan) -> dict[str, Any]:
    """The plan's report: durations, hashes, sounds; its captions are out_dir/captions.srt.
    A plan that rendered while it planned adds what it drew (as a render reports it)."""
    drawn = {} if plan.rendered is None else _publish_outputs(spec, plan.rendered, plays=True)
    return {
        **drawn,
        "ok": True,
        "durations": plan.durations,
        "hashes": plan.hashes,
        "sounds": _sounds_report(plan.sounds),
        "captions": plan.srt is not None,
        "drawing_seconds": plan.drawing_seconds,
    }


def _publish_outputs(
    spec: RenderSpec,
    output: RenderOutput,
    *,
    plays: bool,
    into: Path | None = None,
    video_name: str = VIDEO_NAME,
) -> dict[str, Any]:
    """Move the range's movie (and .srt, and each play's movie) to the fixed names under
    ``into`` (default: out_dir); the report holds only numbers."""
    out_dir = Path(spec.out_dir)
    into = into or out_dir
    if output.video:
        os.replace(output.video, into / video_name)
    if output.srt:
        os.replace(output.srt, into / CAPTIONS_NAME)
    movies = []
    if plays:
        for play in output.plays:
            os.replace(out_dir / play.file, into / f"{PLAY_PREFIX}{play.index:04d}.mp4")
            movies.append([play.index, play.frames, play.hash])
    return {
        "ok": True,
        "frames": output.frames,
        "animations": output.animations,
        "video": output.video is not None,
        "captions": output.srt is not None,
        "sounds": _sounds_report(output.sounds),
        "plays": movies,
    }


def _plan_and_hand_off(spec: RenderSpec) -> tuple[dict[str, Any] | None, int]:
    """Plan in a child process, offer the plan to the worker (``handoff``), then draw the
    range it answers with in this process, joining in the movies the plan drew already: the
    range's video is out_dir/head.mp4, its plays' movies out_dir/play-NNNN.mp4, its report the
    plan report's ``head``. No answer, or no range: the plan's report as it is.

    Why a child: after a construct() the process is not what a fresh import is (manim mutates
    some shared default arrays in place, cairo numbers its SVG surfaces per process), so a
    second construct() here would hash, and could draw, differently from every other chunk.
    Forked before any scene code, this process is as fresh as a chunk's. (The child closes the
    hand-off pipe; what a scene could still send there is read as untrusted as any report.)
    """
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the plan
        os.close(read_end)
        handoff.drop()
        result, code = _attempt(lambda: _plan_report(spec))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(json.dumps(result).encode())
        _exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read(_MAX_PLAN_BYTES)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):  # killed (by the scene, or the kernel): end the same way
        os.kill(os.getpid(), os.WTERMSIG(status))
    code = os.waitstatus_to_exitcode(status)
    try:
        report = json.loads(data)
    except ValueError:
        report = None
    if code != 0 or not isinstance(report, dict) or report.get("ok") is not True:
        return report if isinstance(report, dict) else None, code
    cues = report.pop("cues", None)  # offered with the plan; never part of the report
    return _attempt(lambda: _hand_off(spec, report, cues))


# A plan report the child hands its parent, at most (the worker caps what it reads anyway).
_MAX_PLAN_BYTES = 64 * 2**20


def _plan_report(spec: RenderSpec) -> dict[str, Any]:
    from . import assets_shim, media

    report = {**_publish_plan(spec, plan_scene_full(spec)), "assets_missed": assets_shim.missed()}
    if report.get("captions") is True:
        # The worker stores the plan's captions when it takes the hand-off: its .srt leaves the
        # jail only when the run ends, which a chunk 0 handed on after a crash never reaches.
        # Parsed here, in the jail, as the media jail parses a plan's .srt (left out when
        # unreadable: the worker then declines).
        with suppress(media.Problem):
            report["cues"] = media.parse_srt(str(Path(spec.out_dir).resolve() / CAPTIONS_NAME))
    return report


def _hand_off(spec: RenderSpec, report: dict[str, Any], cues: Any) -> dict[str, Any]:
    missed = report.pop("assets_missed", True)
    answer = handoff.ask({**report, "assets_missed": missed, "cues": cues})
    draw = (answer or {}).get("draw")
    if not isinstance(draw, dict):
        return report
    out_dir = Path(spec.out_dir).resolve()
    first = int(draw["from"])
    upto = None if draw.get("upto") is None else int(draw["upto"])
    drawn = [
        (index, frames)
        for index, frames, _ in report.get("plays", [])
        if first <= index and (upto is None or index < upto)
    ]
    # The same out_dir: the plan's text and TeX files are there already.
    head = replace(
        spec,
        from_animation=first,
        upto_animation=upto,
        skip_plays=tuple(int(i) for i in draw.get("skip_plays", ())),
        max_inflight_encoders=draw.get("max_inflight_encoders") or spec.max_inflight_encoders,
        hash_plays=True,
        range_media=False,
        render_budget_seconds=None,
        cached_hashes=(),
        handoff=False,
        joined_movies=tuple(
            (index, str(out_dir / f"{PLAY_PREFIX}{index:04d}.mp4")) for index, _ in drawn
        ),
    )
    output = render_scene(head)
    published = _publish_outputs(head, output, plays=True, into=out_dir, video_name=HEAD_NAME)
    # The video holds the joined movies too.
    published["frames"] += sum(frames for _, frames in drawn)
    published["animations"] += len(drawn)
    return {**report, "head": published}


def _attempt(work: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """Run the program's work; a failure becomes the report the worker reads, with its code."""
    try:
        return work(), 0
    except SceneError as exc:
        print(exc, file=sys.stderr)  # the render log shows the scene's error too
        return {"ok": False, "error": str(exc), "scene_error": True}, 2
    except Exception as exc:
        traceback.print_exc()
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "scene_error": False}, 1


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m workers.jail.program.runner plan|render|serve SPEC.json RESULT.json``."""
    signal_started()
    handoff.take()
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "serve":
        args[0] = _serve()
    if len(args) != 3 or args[0] not in ("plan", "render"):
        print(
            "usage: python -m workers.jail.program.runner plan|render|serve SPEC.json RESULT.json",
            file=sys.stderr,
        )
        return 1
    command, spec_path, result_path = args
    result: dict[str, Any] | None
    try:
        spec = _spec_from_json(json.loads(Path(spec_path).read_text(encoding="utf-8")))
    except Exception as exc:
        failure = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "scene_error": False}
        Path(result_path).write_text(json.dumps(failure), encoding="utf-8")
        return 1
    if command == "plan" and spec.handoff:
        result, code = _plan_and_hand_off(spec)
    elif command == "plan":
        result, code = _attempt(lambda: _publish_plan(spec, plan_scene_full(spec)))
    else:
        result, code = _attempt(
            lambda: _publish_outputs(spec, render_scene(spec), plays=spec.hash_plays)
        )
    if result is not None:
        Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return code


def _exit(status: int) -> None:
    """End the process without tearing down the interpreter.

    Why: the report and every output are written and closed; the teardown of manim's modules
    and caches costs 0.1 to 0.2 s per run. Exit handlers still run (the scene's own included,
    as in a plain run)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _exit(main())
