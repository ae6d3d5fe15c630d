"""Frames lent by the Cairo camera to manim's encoder, instead of copied (manim 0.22.0).

Plain manim pays for every frame it encodes three times over before x264 sees it: the
renderer copies the camera's pixel array (``get_frame``, a fresh 8 MB at 1080p), and the
encoder thread turns that copy into an ``av.VideoFrame`` with ``from_ndarray``, which copies
it to a ``bytes`` object and then into a freshly allocated frame. Each fresh buffer is also
paged in by the kernel. Only the pixels matter to the video, so here:

- the camera draws into arrays of a small pool; ``render()`` hands the drawn array itself to
  the encoder and marks it lent; the camera switches to a free array of the pool before it
  next draws (the background copy that starts every frame overwrites all of it anyway);
- each encoder copies the array once into one ``av.VideoFrame`` it keeps for the whole
  movie, gives the array back to the pool, and encodes that frame. PyAV converts it to the
  stream's pixel format (yuv420p) inside ``encode()``, so libavcodec never keeps the reused
  frame. Streams in the array's own format (``rgba``) would keep it, so they get a fresh
  frame per write, as in plain manim.

The encoder receives the same pixels in the same order, and converts and encodes them with
the same calls, so the movie is byte-for-byte plain manim's (the fidelity corpus compares
every frame). A frame the writer drops (a skipped play, no open movie) is never lent, so the
camera keeps drawing into it. Only manim's own cameras take part; a scene's own camera class
may draw or reset differently, and keeps plain manim's copies.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from manim.camera.camera import Camera
from manim.camera.moving_camera import MovingCamera
from manim.camera.multi_camera import MultiCamera
from manim.camera.three_d_camera import ThreeDCamera
from manim.renderer.cairo_renderer import CairoRenderer
from manim.scene.scene_file_writer import _PartialMovieEncodeJob
from manim.scene.video_segment_encoder import VideoSegmentEncoder

__all__ = ["FramePool", "install", "pool_of"]

# The cameras whose every write to pixel_array goes through set_pixel_array (the background
# copy) or capture_mobjects (drawing), the two places where a lent array is swapped out.
POOLED_CAMERAS = (Camera, MovingCamera, ThreeDCamera, MultiCamera)
_installed = False
# Each camera's pool, kept beside the camera rather than on it: manim's play hash (the
# animation cache's key) reads the camera's attributes, and a pool is no scene state.
_pools: weakref.WeakKeyDictionary[Camera, FramePool] = weakref.WeakKeyDictionary()
# id(array) -> the pool that made it, for the encoder threads (which see only arrays). A
# pool keeps every array it made, so an id here is never reused by another object.
_owners: dict[int, FramePool] = {}


class FramePool:
    """The arrays one camera draws into: the one it draws into now, the ones encoders hold
    (with how many of their frames each is), and the free ones. Encoder threads give arrays
    back; the camera takes them."""

    def __init__(self, first: np.ndarray) -> None:
        self.current = first
        self._owned = [first]
        _owners[id(first)] = self
        self._free: list[np.ndarray] = []
        self._leases: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """How many arrays the pool has made: the encoders' queues bound it."""
        return len(self._owned)

    def lend(self, array: np.ndarray) -> None:
        """An encoder now holds ``array`` (once more): the camera must not draw into it again
        until every lease is given back."""
        with self._lock:
            self._leases[id(array)] = self._leases.get(id(array), 0) + 1

    def give_back(self, array: np.ndarray) -> None:
        """An encoder is done with ``array`` (copied into its own frame)."""
        with self._lock:
            left = self._leases.pop(id(array), 0) - 1
            if left > 0:
                self._leases[id(array)] = left
            elif array is not self.current:
                self._free.append(array)

    def for_drawing(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The array the camera may draw into now, and the lent one it replaces (or None)."""
        with self._lock:
            if id(self.current) not in self._leases:
                return self.current, None
            lent = self.current
            if self._free:
                fresh = self._free.pop()
            else:
                fresh = np.empty_like(lent)
                self._owned.append(fresh)
                _owners[id(fresh)] = self
            self.current = fresh
            return fresh, lent


def pool_of(camera: Camera) -> FramePool | None:
    """The camera's pool while it draws into it; None for other cameras or after a resize."""
    pool = _pools.get(camera)
    if pool is None and type(camera) in POOLED_CAMERAS and hasattr(camera, "pixel_array"):
        pool = _pools[camera] = FramePool(camera.pixel_array)
    if pool is not None and camera.pixel_array is not pool.current:
        return None  # set_pixel_array replaced it (a new shape): plain manim's copies from now
    return pool


def _swap_out_lent(camera: Camera, *, keep_pixels: bool) -> None:
    pool = pool_of(camera)
    if pool is None:
        return
    fresh, lent = pool.for_drawing()
    if lent is not None:
        camera.pixel_array = fresh
        if keep_pixels:  # drawing over the lent frame's pixels, not over a background
            np.copyto(fresh, lent)


def _patch_camera() -> None:
    orig_set_pixel_array = Camera.set_pixel_array
    orig_capture = Camera.capture_mobjects

    # Why: every frame starts here (reset / set_frame_to_background copy the background over
    # the whole array), so this is where the camera leaves a lent array to its encoder.
    def set_pixel_array(self: Camera, pixel_array: Any, convert_from_floats: bool = False) -> None:
        _swap_out_lent(self, keep_pixels=False)
        orig_set_pixel_array(self, pixel_array, convert_from_floats)

    # Why: drawing without a reset first (a scene's own capture) must not touch a lent array.
    def capture_mobjects(self: Camera, mobjects: Iterable[Any], **kwargs: Any) -> None:
        _swap_out_lent(self, keep_pixels=True)
        orig_capture(self, mobjects, **kwargs)

    Camera.set_pixel_array = set_pixel_array  # type: ignore[method-assign]
    Camera.capture_mobjects = capture_mobjects  # type: ignore[method-assign]


def _patch_renderer() -> None:
    orig_render = CairoRenderer.render

    # Why: plain manim's render() is update_frame + add_frame(get_frame()), and get_frame
    # copies. A skipped frame is dropped by add_frame, a written one is lent (below), so
    # neither needs the copy.
    def render(self: CairoRenderer, scene: Any, time: float, moving_mobjects: Any = None) -> None:
        if pool_of(self.camera) is None:
            orig_render(self, scene, time, moving_mobjects)
            return
        self.update_frame(scene, moving_mobjects)
        self.add_frame(self.camera.pixel_array)

    CairoRenderer.render = render  # type: ignore[method-assign]


def _patch_encoder() -> None:
    orig_put = _PartialMovieEncodeJob.put

    # Why: put() is where a movie's encoder takes a frame (the writer drops frames it has no
    # movie for before this), so only here is an array lent.
    def put(self: _PartialMovieEncodeJob, repeat: int, frame: np.ndarray) -> None:
        pool = _owners.get(id(frame))
        if pool is not None:
            pool.lend(frame)
        orig_put(self, repeat, frame)

    def write_frame(self: VideoSegmentEncoder, pixels: np.ndarray, *, repeat: int = 1) -> None:
        """Encode ``pixels`` at consecutive segment-local PTS values (as manim 0.22.0)."""
        self._validate_frame(pixels, repeat)
        time_base = Fraction(self.spec.frame_rate.denominator, self.spec.frame_rate.numerator)
        try:
            frame = _staged(self, pixels)
        finally:
            pool = _owners.get(id(pixels))
            if pool is not None:
                pool.give_back(pixels)
        stream: Any = self._stream  # a video stream (manim's own union type says less)
        try:
            for _ in range(repeat):
                frame.pts = self._next_pts
                frame.time_base = time_base
                self._next_pts += 1
                for packet in stream.encode(frame):
                    self._container.mux(packet)
        except BaseException as error:
            raise self._operation_error("encode", error) from error

    _PartialMovieEncodeJob.put = put  # type: ignore[method-assign]
    VideoSegmentEncoder.write_frame = write_frame  # type: ignore[method-assign]


def _staged(encoder: VideoSegmentEncoder, pixels: np.ndarray) -> av.VideoFrame:
    """``pixels`` as an rgba frame: copied into the frame this encoder keeps, or (for a
    stream that takes rgba as it is) into a new one."""
    if encoder.spec.pixel_format == "rgba":
        return av.VideoFrame.from_ndarray(pixels, format="rgba")
    view = getattr(encoder, "_farm_staged_view", None)
    if view is None:
        frame = av.VideoFrame(encoder.spec.width, encoder.spec.height, "rgba")
        plane = frame.planes[0]  # its rows may be padded (alignment)
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        view = rows[:, : encoder.spec.width * 4]
        encoder._farm_staged = frame  # type: ignore[attr-defined]
        encoder._farm_staged_view = view  # type: ignore[attr-defined]
    np.copyto(view, pixels.reshape(view.shape))
    staged: av.VideoFrame = encoder._farm_staged  # type: ignore[attr-defined]
    return staged


def install() -> None:
    """Patch manim (0.22.0) to lend the Cairo camera's frames to its encoders; idempotent."""
    global _installed
    if _installed:
        return
    _patch_camera()
    _patch_renderer()
    _patch_encoder()
    _installed = True
