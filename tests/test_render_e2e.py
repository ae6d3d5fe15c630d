"""A job from POST to a downloadable video, through real workers, sandbox, S3 and ffmpeg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Key, submit, wait_for
from tests.support import download
from workers.media import probe

SHAPES = """
from manim import *

class Shapes(Scene):
    def construct(self):
        sq = Square(color=BLUE)
        self.play(Create(sq), run_time=0.6)
        self.play(sq.animate.rotate(PI / 4), run_time=0.6)
        self.wait(0.3)
"""

SUBCAPTIONED = """
from manim import *

class Captioned(Scene):
    def construct(self):
        c = Circle()
        self.add_subcaption("A circle is drawn", duration=0.6)
        self.play(Create(c), run_time=0.6)
        self.play(c.animate.shift(RIGHT), subcaption="and it moves", run_time=0.6)
"""

MATH = r"""
from manim import *

class Math(Scene):
    def construct(self):
        eq = MathTex(r"e^{i\pi} + 1 = 0")
        self.play(Write(eq), run_time=0.6)
"""


@pytest.mark.parametrize(
    ("aspect", "fps", "size"),
    [("16:9", None, (854, 480)), ("9:16", 10, (480, 854))],
)
def test_job_completes_with_requested_geometry(
    client: Any,
    api_key: Key,
    worker: Any,
    tmp_path: Path,
    aspect: str,
    fps: int | None,
    size: tuple[int, int],
) -> None:
    # Given a valid job; When a worker renders it
    extra = {"aspectRatio": aspect, **({"fps": fps} if fps else {})}
    job_id = submit(client, api_key, SHAPES, "Shapes", **extra)
    job = wait_for(client, api_key, job_id)
    # Then it went queued -> running -> completed, with links that download
    assert job["status"] == "completed", job
    order = ["queued", "running", "completed"]
    assert [order.index(s) for s in job["_seen"]] == sorted(order.index(s) for s in job["_seen"])
    assert job["error"] is None and job["durationMs"] > 0 and job["completedAt"]
    assert job["creditsCost"] is not None
    video = download(job["result"]["video"], tmp_path / "video.mp4")
    info = probe(video)
    assert (info["width"], info["height"]) == size
    assert info["fps"] == (fps or 15) and info["codec"] == "h264"
    thumb = download(job["result"]["thumbnail"], tmp_path / "thumb.jpg")
    assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    # no subcaptions in this scene: still a WebVTT file (Kodisc always links one), without cues
    captions = download(job["result"]["captions"], tmp_path / "c.vtt").read_text()
    assert captions.startswith("WEBVTT") and "-->" not in captions


def test_subcaptions_become_webvtt(client: Any, api_key: Key, worker: Any, tmp_path: Path) -> None:
    job = wait_for(client, api_key, submit(client, api_key, SUBCAPTIONED, "Captioned"))
    assert job["status"] == "completed", job
    vtt = download(job["result"]["captions"], tmp_path / "c.vtt").read_text()
    assert vtt.startswith("WEBVTT\n")
    assert "00:00:00.000 --> 00:00:00.600\nA circle is drawn" in vtt
    assert "and it moves" in vtt
    # Every cue line is well formed.
    for line in vtt.splitlines():
        if "-->" in line:
            start, end = line.split(" --> ")
            assert len(start) == len(end) == len("00:00:00.000")


def test_mathtex_scene_renders(client: Any, api_key: Key, worker: Any) -> None:
    job = wait_for(client, api_key, submit(client, api_key, MATH, "Math"))
    assert job["status"] == "completed", job["error"]


FAILURES = {
    "syntax": ("from manim import *\nclass S(Scene)\n    pass\n", "S", "SyntaxError"),
    "exception": (
        "from manim import *\nclass S(Scene):\n    def construct(self):\n"
        "        self.play(Create(Square()), run_time=0.2)\n        1 / 0\n",
        "S",
        "ZeroDivisionError",
    ),
    "class": (SHAPES, "NoSuchScene", "NoSuchScene"),
    "not_a_scene": ("from manim import *\nclass S:\n    pass\n", "S", "S"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_scene_errors_fail_the_job_with_the_scenes_message(
    client: Any, api_key: Key, worker: Any, case: str
) -> None:
    code, class_name, expected = FAILURES[case]
    job = wait_for(client, api_key, submit(client, api_key, code, class_name))
    assert job["status"] == "failed"
    assert expected in job["error"]
    # The scene's own message, not the worker's stack.
    assert "workers/" not in job["error"] and "site-packages" not in job["error"]
    assert job["result"] is None and job["durationMs"] is not None


def test_exception_message_names_the_scene_line(client: Any, api_key: Key, worker: Any) -> None:
    code, class_name, _ = FAILURES["exception"]
    job = wait_for(client, api_key, submit(client, api_key, code, class_name))
    assert 'scene.py", line 5' in job["error"] and "division by zero" in job["error"]


def test_timeout_fails_and_the_worker_keeps_serving(client: Any, api_key: Key, worker: Any) -> None:
    code = (
        "import time\nfrom manim import *\nclass S(Scene):\n    def construct(self):\n"
        "        time.sleep(10**9)\n"
    )
    slow = submit(client, api_key, code, "S")
    job = wait_for(client, api_key, slow, timeout=120)
    assert job["status"] == "failed" and "timed out" in job["error"]
    # The next job on the same worker still completes.
    after = wait_for(client, api_key, submit(client, api_key, SHAPES, "Shapes", fps=5))
    assert after["status"] == "completed"
