"""Quality presets and the render geometry a job asks for (Kodisc's v2 tiers)."""

from __future__ import annotations

from dataclasses import dataclass

QUALITIES = ("low", "medium", "high", "twok", "fourk")
ASPECT_RATIOS = ("16:9", "9:16")
MAX_FPS = 120
# The manim the workers run (setup.cfg's [render] extra pins it; workers check it at start).
# Part of the result cache key. A constant, not package metadata: the API image has no manim.
MANIM_VERSION = "0.22.0"


@dataclass(frozen=True)
class Preset:
    width: int
    height: int
    fps: int
    # Credits: reserved at submit, then charged per second of video.
    min_credits: int
    credits_per_second: float


PRESETS: dict[str, Preset] = {
    "low": Preset(854, 480, 15, min_credits=1, credits_per_second=0.1),
    "medium": Preset(1280, 720, 30, min_credits=2, credits_per_second=0.2),
    "high": Preset(1920, 1080, 30, min_credits=4, credits_per_second=0.4),
    "twok": Preset(2560, 1440, 30, min_credits=6, credits_per_second=0.6),
    "fourk": Preset(3840, 2160, 30, min_credits=10, credits_per_second=1.0),
}


@dataclass(frozen=True)
class Geometry:
    """Pixels and frame rate of a job's video."""

    width: int
    height: int
    fps: int
    portrait: bool


def geometry_for(quality: str, aspect_ratio: str, fps: int | None) -> Geometry:
    """Resolve quality, aspect ratio and an optional fps override into pixels and rate."""
    preset = PRESETS[quality]
    portrait = aspect_ratio == "9:16"
    width, height = (preset.height, preset.width) if portrait else (preset.width, preset.height)
    return Geometry(width=width, height=height, fps=fps or preset.fps, portrait=portrait)
