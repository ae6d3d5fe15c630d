"""The OpenGL pool: a worker started with --renderer opengl (headless Mesa here, EGL on GPUs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import scenes
from tests.conftest import ALL_QUEUES, Key, Process, submit, wait_for, wait_until_idle
from tests.support import download

MOVING_CAMERA = """
from manim import *

class Zoom(MovingCameraScene):
    def construct(self):
        sq = Square()
        self.play(Create(sq), run_time=0.4)
        self.play(self.camera.frame.animate.scale(0.5), run_time=0.4)
"""


@pytest.fixture(scope="module")
def opengl_worker(worker: Process, farm_env: dict[str, str], artifacts: Path) -> Iterator[Process]:
    """Swap the session's cairo worker for an OpenGL one for this module."""
    worker.stop()
    gl = Process(
        ["worker", "--queues", ALL_QUEUES, "--concurrency", "2", "--renderer", "opengl"],
        farm_env,
        artifacts / "opengl-worker.log",
    ).start()
    yield gl
    gl.stop()
    worker.start()


def test_opengl_chunks_match_plain_opengl_manim(
    client: Any, api_key: Key, opengl_worker: Process, pool: Any, tmp_path: Path
) -> None:
    wait_until_idle(pool)  # every slot free: the job is split
    # A comment of its own: the cairo render of this scene elsewhere in the suite is cached.
    code = scenes.DT_UPDATER + "\n# rendered by the OpenGL pool\n"
    job = wait_for(client, api_key, submit(client, api_key, code, "DtUpdater"))
    assert job["status"] == "completed", job["error"]
    assert job["renderer"] == "opengl"
    assert job["progress"]["chunksTotal"] >= 2
    farm_video = download(job["result"]["video"], tmp_path / "farm.mp4")
    plain_video, _ = scenes.plain_manim_render(
        scenes.DT_UPDATER,
        "DtUpdater",
        tmp_path / "plain",
        renderer="opengl",
        size=(854, 480),
        fps=15,
    )
    assert scenes.frame_md5s(farm_video) == scenes.frame_md5s(plain_video)


def test_scene_opengl_cannot_render_falls_back_to_cairo(
    client: Any, api_key: Key, opengl_worker: Process
) -> None:
    # MovingCameraScene's camera.frame does not exist under manim's OpenGL renderer.
    job = wait_for(client, api_key, submit(client, api_key, MOVING_CAMERA, "Zoom", fps=5))
    assert job["status"] == "completed", job["error"]
    assert job["renderer"] == "cairo"
