"""Scene sources and video helpers shared by the render tests.

Run times are deliberately not whole frames at 15 fps, and several scenes carry
dt updaters, so any drift between skipped and rendered animations shows up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from workers.jail.program.runner import ENCODER_THREADS

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WIDTH, HEIGHT, FPS = 426, 240, 15

MULTI_WAIT = """
from manim import *

class MultiWait(Scene):
    def construct(self):
        sq = Square(color=BLUE)
        self.play(Create(sq), run_time=0.53)
        self.wait(0.37)
        self.play(sq.animate.shift(RIGHT * 2).scale(0.5), run_time=0.71)
        self.pause(0.45)
        c = Circle(color=RED).shift(LEFT * 2)
        self.play(FadeIn(c), Rotate(sq, PI / 3), run_time=0.62)
        self.wait(0.3)
        self.play(FadeOut(sq), c.animate.shift(UP), run_time=0.44)
"""

DT_UPDATER = """
from manim import *

class DtUpdater(Scene):
    def construct(self):
        dot = Dot(color=YELLOW).shift(LEFT * 4)
        dot.add_updater(lambda m, dt: m.shift(RIGHT * 1.3 * dt))
        bar = Rectangle(width=0.2, height=2)
        bar.add_updater(lambda m, dt: m.rotate(2.1 * dt))
        self.add(dot, bar)
        self.wait(0.41)
        self.play(bar.animate.set_color(RED), run_time=0.57)
        self.wait(0.52)
        self.play(Indicate(dot), run_time=0.63)
        self.wait(0.35)
"""

VALUE_TRACKER = """
from manim import *

class Tracker(Scene):
    def construct(self):
        t = ValueTracker(0.0)
        line = always_redraw(
            lambda: Line(ORIGIN, [3 * np.cos(t.get_value()), 3 * np.sin(t.get_value()), 0])
        )
        dot = always_redraw(lambda: Dot(line.get_end(), color=GREEN))
        self.add(line, dot)
        self.play(t.animate.set_value(1.7), run_time=0.74)
        self.wait(0.29)
        self.play(t.animate.set_value(-0.6), run_time=0.66, rate_func=there_and_back)
        t.add_updater(lambda m, dt: m.increment_value(0.9 * dt))
        self.wait(0.61)
        self.play(t.animate.set_value(3.0), run_time=0.48)
"""

# The corpus's scene, as a user would submit it (tests/corpus is the one copy).
TRANSFORM_CHAIN = (Path(__file__).parent / "corpus" / "c13_transform_chain.py").read_text()

SUBCAPTIONS = """
from manim import *

class Captions(Scene):
    def construct(self):
        sq = Square()
        sq.add_updater(lambda m, dt: m.rotate(0.8 * dt))
        self.add_subcaption("A square appears", duration=0.8)
        self.play(Create(sq), run_time=0.53)
        self.wait(0.37)
        self.play(sq.animate.shift(RIGHT), run_time=0.71, subcaption="It moves right")
        self.add_subcaption("Waiting a bit", duration=0.5, offset=0.1)
        self.wait(0.44)
        self.play(sq.animate.shift(LEFT * 2), run_time=0.62, subcaption="And left",
                  subcaption_offset=0.2, subcaption_duration=0.3)
        self.play(FadeOut(sq), run_time=0.41)
        self.add_subcaption("The end", duration=0.6)
"""

PORTRAIT = """
from manim import *

class Portrait(Scene):
    def construct(self):
        top = Text("top", font_size=48).to_edge(UP)
        box = Rectangle(width=7.5, height=13.5, color=BLUE)
        self.play(Create(box), FadeIn(top), run_time=0.58)
        d = Dot().to_edge(DOWN)
        d.add_updater(lambda m, dt: m.shift(UP * 2.2 * dt))
        self.add(d)
        self.wait(0.43)
        self.play(box.animate.scale(0.5), run_time=0.52)
        self.wait(0.37)
"""

# Slow only while rendering (planning runs with config.dry_run set), so tests can act mid-chunk.
SLOW_RENDER = """
import time
from manim import *

class Slow(Scene):
    def construct(self):
        if not config.dry_run:
            time.sleep({sleep})
        self.play(Create(Square()), run_time=0.5)
        self.play(FadeOut(Square()), run_time=0.5)
"""


def uncached(code: str) -> str:
    """The same scene under a new result-cache key (the farm serves identical jobs at once)."""
    import uuid

    return f"{code}\n# {uuid.uuid4()}\n"


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


RUNNER = "workers.jail.program.runner"


def runner_spec(code: str, class_name: str, out_dir: Path, **extra: object) -> dict[str, object]:
    """A spec for the jail program at the suite's size and fps (landscape); ``extra`` adds or
    overrides fields (a range, hash_plays, seed ...)."""
    return {
        "code": code,
        "class_name": class_name,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
        "portrait": False,
        "out_dir": str(out_dir),
        **extra,
    }


def runner_subprocess(command: str, spec: dict[str, object], work: Path) -> dict[str, object]:
    """Run the jail program ``workers.jail.program.runner`` in a fresh process (no jail)."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", RUNNER, command, str(spec_path), str(result_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    result: dict[str, object] = json.loads(result_path.read_text())
    result["returncode"] = proc.returncode
    result["stderr"] = proc.stderr
    return result


def plain_manim_render(
    code: str,
    class_name: str,
    work: Path,
    *,
    portrait: bool = False,
    renderer: str = "cairo",
    size: tuple[int, int] = (WIDTH, HEIGHT),
    fps: int = FPS,
    seed: int = 0,
) -> tuple[Path, Path | None]:
    """Render a whole scene with the stock manim CLI (no farm code); return (mp4, srt).

    ``size`` is landscape (width, height); portrait swaps it.
    """
    work.mkdir(parents=True, exist_ok=True)
    source = work / "plain_scene.py"
    source.write_text(code)
    width, height = (size[1], size[0]) if portrait else size
    cfg = work / "manim.cfg"
    long_side = repr(8.0 * 16.0 / 9.0)
    frame = (
        f"frame_width = 8.0\nframe_height = {long_side}\n"
        if portrait
        else f"frame_width = {long_side}\nframe_height = 8.0\n"
    )
    cfg.write_text("[CLI]\n" + frame)
    media = work / "media"
    run(
        [
            str(VENV_BIN / "manim"),
            "render",
            str(source),
            class_name,
            "--config_file",
            str(cfg),
            "-r",
            f"{width},{height}",
            "--fps",
            str(fps),
            "--disable_caching",
            "--media_dir",
            str(media),
            "--format",
            "mp4",
            "--seed",
            str(seed),
            # The farm's libx264 thread count (runner.ENCODER_THREADS): its bytes depend on it
            "--encoder-option",
            f"threads={ENCODER_THREADS}",
            "--renderer",
            renderer,
            "--silent",
            "-v",
            "WARNING",
            "--progress_bar",
            "none",
            "-o",
            "plain",
        ],
        cwd=work,
        timeout=120,
    )
    videos = [p for p in media.rglob("plain.mp4")]
    assert len(videos) == 1, videos
    srt = videos[0].with_suffix(".srt")
    return videos[0], (srt if srt.exists() else None)


def concat_videos(parts: list[Path], out: Path) -> Path:
    """Concatenate mp4 chunks exactly as the farm's stitcher does (stream copy, media jail)."""
    import shutil

    from farm.config import load_settings
    from workers.media import stitch

    video, _, _ = stitch(load_settings({}), parts, out.parent / f"{out.stem}-stitch")
    shutil.move(video, out)
    return out


def frame_md5s(video: Path) -> list[str]:
    """MD5 of every decoded frame, in order (ffmpeg framemd5)."""
    out = run(["ffmpeg", "-v", "error", "-i", str(video), "-map", "0:v:0", "-f", "framemd5", "-"])
    return [
        line.rsplit(",", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line and not line.startswith("#")
    ]


def duration_s(video: Path) -> float:
    """Container duration in seconds (ffprobe)."""
    out = run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
            str(video),
        ]
    )
    return float(out.stdout.strip())


def srt_entries(text: str) -> list[tuple[str, str, str]]:
    """(start, end, content) of each subtitle in an .srt text, sorted by time."""
    import srt

    return sorted((str(s.start), str(s.end), s.content) for s in srt.parse(text))


def vtt_cues(text: str) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text) of each cue of a WebVTT text, sorted by time."""
    cues = []
    for block in (b for b in text.split("\n\n") if "-->" in b):
        lines = block.splitlines()
        arrow = next(i for i, line in enumerate(lines) if "-->" in line)
        start, end = (_vtt_ms(t) for t in lines[arrow].split(" --> "))
        cues.append((start, end, "\n".join(lines[arrow + 1 :])))
    return sorted(cues)


def _vtt_ms(stamp: str) -> int:
    h, m, rest = stamp.split(":")
    s, ms = rest.split(".")
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def srt_cues(text: str) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text) of each subtitle of an .srt text, sorted by time."""
    from farm.captions import parse_srt

    return sorted((c.start_ms, c.end_ms, c.text) for c in parse_srt(text))
