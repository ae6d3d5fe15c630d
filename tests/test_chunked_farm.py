"""Chunked rendering through the farm: identical frames to plain manim, retries, cancel, cache."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import scenes
from tests.conftest import Key, alive, submit, wait_for, wait_until_idle
from tests.scenes import SLOW_RENDER, uncached

CASES = {
    "multi_wait": (scenes.MULTI_WAIT, "MultiWait", "16:9"),
    "dt_updater": (scenes.DT_UPDATER, "DtUpdater", "16:9"),
    "value_tracker": (scenes.VALUE_TRACKER, "Tracker", "16:9"),
    "transform_chain": (scenes.TRANSFORM_CHAIN, "TransformChain", "16:9"),
    "subcaptions": (scenes.SUBCAPTIONS, "Captions", "16:9"),
    "portrait": (scenes.PORTRAIT, "Portrait", "9:16"),
}


def _download(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=30) as response:
        path.write_bytes(response.read())
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_stitched_video_has_exactly_the_frames_of_plain_manim(
    client: Any, api_key: Key, worker: Any, pool: Any, tmp_path: Path, case: str
) -> None:
    code, class_name, aspect = CASES[case]
    wait_until_idle(pool)  # every slot free: the job is split
    # Given the farm's render of a scene, split into chunks
    job = wait_for(client, api_key, submit(client, api_key, code, class_name, aspectRatio=aspect))
    assert job["status"] == "completed", job["error"]
    assert job["progress"]["chunksTotal"] >= 2, "the scene should have been split"
    farm_video = _download(job["result"]["video"], tmp_path / "farm.mp4")
    # and plain manim's render of the same scene and settings
    plain_video, plain_srt = scenes.plain_manim_render(
        code, class_name, tmp_path / "plain", portrait=aspect == "9:16", size=(854, 480), fps=15
    )
    # Then the decoded frames are identical, and so is the duration
    farm_frames, plain_frames = scenes.frame_md5s(farm_video), scenes.frame_md5s(plain_video)
    assert len(farm_frames) == len(plain_frames)
    assert farm_frames == plain_frames
    assert scenes.duration_s(farm_video) == pytest.approx(scenes.duration_s(plain_video), abs=1e-3)
    if plain_srt is not None:
        vtt = _download(job["result"]["captions"], tmp_path / "c.vtt").read_text()
        assert scenes.vtt_cues(vtt) == scenes.srt_cues(plain_srt.read_text())
    else:
        vtt = _download(job["result"]["captions"], tmp_path / "c.vtt").read_text()
        assert vtt.startswith("WEBVTT") and "-->" not in vtt  # Kodisc: a WebVTT file, no cues


ONE_LONG = """
from manim import *

class OneLong(Scene):
    def construct(self):
        self.play(Create(Circle()), run_time=2)
"""


def test_single_long_animation_is_one_chunk(client: Any, api_key: Key, worker: Any) -> None:
    job = wait_for(client, api_key, submit(client, api_key, ONE_LONG, "OneLong", fps=5))
    assert job["status"] == "completed"
    assert job["progress"] == {"chunksDone": 1, "chunksTotal": 1, "fraction": 1.0}


RENDER_ONLY_ERROR = """
from manim import *

class Breaks(Scene):
    def construct(self):
        self.play(Create(Square()), run_time=0.5)
        if not config.dry_run:
            raise RuntimeError("broken only when drawing")
        self.play(FadeOut(Square()), run_time=0.5)
"""


def _wait_running_chunks(
    client: Any, key: Key, job_id: str, worker: Any, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v2/render/{job_id}", headers=key.headers).get_json()
        if job["progress"]["chunksTotal"] and worker.render_children():
            return dict(job)
        time.sleep(0.2)
    raise AssertionError("no chunk started rendering")


def test_chunk_that_always_fails_fails_the_job_with_its_message(
    client: Any, api_key: Key, worker: Any
) -> None:
    job = wait_for(client, api_key, submit(client, api_key, RENDER_ONLY_ERROR, "Breaks", fps=5))
    assert job["status"] == "failed"
    assert "RuntimeError: broken only when drawing" in job["error"]


def test_cancel_stops_running_chunks(client: Any, api_key: Key, worker: Any, pool: Any) -> None:
    wait_until_idle(pool)  # every slot free: the job is split in two
    job_id = submit(client, api_key, uncached(SLOW_RENDER.format(sleep=60)), "Slow", fps=5)
    running = _wait_running_chunks(client, api_key, job_id, worker)
    # Progress is on the job while it runs
    assert running["status"] == "running"
    assert running["progress"]["chunksTotal"] == 2 and running["progress"]["chunksDone"] == 0
    rendering = worker.render_children()
    response = client.delete(f"/api/v2/render/{job_id}", headers=api_key.headers)
    assert response.status_code == 200
    job = response.get_json()
    assert job["status"] == "failed" and job["error"] == "canceled"
    # Its render processes are gone within a heartbeat or two
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in rendering) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rendering and not any(alive(pid) for pid in rendering)
    # Canceling again changes nothing
    again = client.delete(f"/api/v2/render/{job_id}", headers=api_key.headers).get_json()
    assert again["status"] == "failed" and again["completedAt"] == job["completedAt"]


def test_killed_render_child_fails_the_job_charged_and_not_retried(
    client: Any, api_key: Key, worker: Any, pool: Any
) -> None:
    # A SIGKILL from inside the jail and one from outside look the same, and only the scene can
    # be blamed without evidence of the platform: the job fails, is charged, is not retried.
    job_id = submit(client, api_key, uncached(SLOW_RENDER.format(sleep=3)), "Slow", fps=5)
    _wait_running_chunks(client, api_key, job_id, worker)
    victim = worker.render_children()[0]
    subprocess.run(["kill", "-KILL", str(victim)], check=True)
    job = wait_for(client, api_key, job_id)
    assert job["status"] == "failed"
    assert job["error"] == "the render process was killed (SIGKILL)"
    assert job["creditsCost"] > 0
    with pool.connection() as conn:
        attempts = conn.execute(
            "SELECT max(attempt) AS n FROM steps WHERE job_id = %s AND kind = 'chunk'", (job_id,)
        ).fetchone()
    assert attempts["n"] == 1


def test_identical_job_completes_from_cache_for_its_owner_only(
    client: Any, make_key: Any, worker: Any, pool: Any
) -> None:
    first_key, second_key = make_key(), make_key()
    code = uncached(ONE_LONG)
    body = {"code": code, "className": "OneLong", "quality": "low", "fps": 4}
    first = wait_for(client, first_key, submit(client, first_key, code, "OneLong", fps=4))
    assert first["status"] == "completed"
    # The same owner submitting it again: completed at once, nothing rendered for it
    response = client.post("/api/v2/render", headers=first_key.headers, json=body)
    assert response.status_code == 202
    again = client.get(
        f"/api/v2/render/{response.get_json()['jobId']}", headers=first_key.headers
    ).get_json()
    assert again["status"] == "completed" and again["jobId"] != first["jobId"]
    with pool.connection() as conn:
        steps = conn.execute(
            "SELECT count(*) AS n FROM steps WHERE job_id = %s", (again["jobId"],)
        ).fetchone()
    assert steps["n"] == 0
    with (
        urllib.request.urlopen(again["result"]["video"]) as a,
        urllib.request.urlopen(first["result"]["video"]) as b,
    ):
        assert a.read() == b.read()
    # Another owner's identical job is not served from it: it renders (and learns nothing)
    other = client.post("/api/v2/render", headers=second_key.headers, json=body).get_json()
    assert other["status"] == "queued"
    # A different fps is a different video: no cache hit
    body["fps"] = 3
    fps3 = client.post("/api/v2/render", headers=first_key.headers, json=body).get_json()
    assert fps3["status"] == "queued"
    rendered = wait_for(client, second_key, other["jobId"])
    assert rendered["status"] == "completed"


@pytest.mark.parametrize("count", [5, 6])  # the third inside a part; past a part's last frame
def test_the_thumbnail_is_the_joined_videos_frame_a_third_of_the_way_in(
    tmp_path: Path, count: int
) -> None:
    from farm.config import load_settings
    from tests.test_scene_runner import spec_for
    from workers.jail.program.runner import render_scene
    from workers.media import stitch

    # Given animations' own movies and their lengths (as the farm's stitch is given them)
    out = render_scene(
        spec_for(scenes.TRANSFORM_CHAIN, "TransformChain", tmp_path / "r", hash_plays=True)
    )
    plays = out.plays[:count]
    parts = [tmp_path / "r" / p.file for p in plays]
    lengths = [p.frames / scenes.FPS for p in plays]
    settings = load_settings({})
    # When they are stitched with lengths and fps known (the thumbnail taken from the part
    # that holds it, while the join runs) and without (taken from the joined video)
    video, thumb, _ = stitch(settings, parts, tmp_path / "known", durations=lengths, fps=scenes.FPS)
    joined, thumb_of_joined, _ = stitch(settings, parts, tmp_path / "probed")
    # Then the videos and the thumbnails are the same
    assert scenes.frame_md5s(video) == scenes.frame_md5s(joined)
    assert thumb.read_bytes() == thumb_of_joined.read_bytes()


def test_the_stitch_in_a_warm_media_jail_is_the_stitch_in_a_cold_one(tmp_path: Path) -> None:
    from farm.config import load_settings
    from tests.test_scene_runner import spec_for
    from workers import media
    from workers.jail.pool import JailPool
    from workers.jail.program.runner import render_scene

    out = render_scene(
        spec_for(scenes.TRANSFORM_CHAIN, "TransformChain", tmp_path / "r", hash_plays=True)
    )
    parts = [tmp_path / "r" / p.file for p in out.plays]
    lengths = [p.frames / scenes.FPS for p in out.plays]
    settings = load_settings({})
    # Given a worker's pool of media jails with one started (its program waiting for a command)
    jails = JailPool(settings, media.stitch_limits(settings), "media")
    try:
        jails.start()
        assert jails.waiting
        # When a stitch takes it, and another stitch runs in a fresh jail
        warm = media.stitch(
            settings, parts, tmp_path / "warm", durations=lengths, fps=scenes.FPS, jails=jails
        )
        cold = media.stitch(settings, parts, tmp_path / "cold", durations=lengths, fps=scenes.FPS)
        # Then both made the same video and thumbnail, and the stitch warmed no next jail (the
        # stitch step does, once its job is recorded)
        assert warm[2] == cold[2] and warm[2].frames == sum(p.frames for p in out.plays)
        assert scenes.frame_md5s(warm[0]) == scenes.frame_md5s(cold[0])
        assert warm[1].read_bytes() == cold[1].read_bytes()
        assert not jails.waiting
    finally:
        jails.close()
