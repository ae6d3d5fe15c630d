"""Fidelity: every corpus scene, split by the farm, decodes to plain manim's render.

Each scene in tests/corpus/ is rendered by the stock ``manim`` CLI (``--seed 0``, the farm's
default seed) and by the farm's runner in chunks, each in a fresh process, at the boundaries
the scene's first line names; the chunks are stitched as the farm stitches them (stream-copy
concat, then one audio track mixed by ``workers.audio_mix``). Decoded video frames, decoded
audio frames (``framemd5``), container duration and captions must be identical.

``FARM_CORPUS=all`` (``make corpus``) also renders every scene split at every animation.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import scenes as S

CORPUS_DIR = S.REPO / "tests" / "corpus"
CORPUS = sorted(CORPUS_DIR.glob("c*.py"))
_META = re.compile(r"^# corpus: (?P<cls>\w+)(?: bounds=(?P<bounds>[\d,]+))?\s*$")


def corpus_meta(path: Path) -> tuple[str, list[int]]:
    """(scene class, chunk boundaries) from a corpus file's first line."""
    match = _META.match(path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must be '# corpus: Class bounds=1,3'"
    bounds = [int(b) for b in (match["bounds"] or "").split(",") if b]
    return match["cls"], bounds


def _runner(command: str, spec: dict[str, object], work: Path) -> dict[str, object]:
    """The jail program's runner, plan or render, in a fresh process (as the farm runs it)."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", S.RUNNER, command, str(spec_path), str(result_path)],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(S.REPO)},
        timeout=180,
    )
    result: dict[str, object] = json.loads(result_path.read_text())
    assert result.get("ok"), f"{result}\n{proc.stderr[-2000:]}"
    return result


def farm_render(
    code: str, class_name: str, bounds: list[int], work: Path, *, seed: int = 0
) -> tuple[Path, list[str]]:
    """Render as the farm does, each step in a fresh process: the plan (which reports the whole
    scene's sounds and subcaptions) and the ranges [0,b1), [b1,b2) ... [bn,end) (video only),
    two at a time; stitch them (stream-copy concat, then the one audio track).

    Returns the final video and the plan's .srt text (none: empty list).
    """
    base = {
        "code": code,
        "class_name": class_name,
        "width": S.WIDTH,
        "height": S.HEIGHT,
        "fps": S.FPS,
        "portrait": False,
        "seed": seed,
    }
    edges: list[int | None] = [None, *bounds, None]
    plan_spec = {**base, "out_dir": str(work / "plan" / "out"), "hash_plays": True}
    steps = [("plan", plan_spec, work / "plan")] + [
        (
            "render",
            {
                **base,
                "out_dir": str(work / f"chunk{i}" / "out"),
                "from_animation": start,
                "upto_animation": end,
                "range_media": False,
            },
            work / f"chunk{i}",
        )
        for i, (start, end) in enumerate(itertools.pairwise(edges))
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: _runner(*a), steps))
    plan, chunks = results[0], results[1:]
    videos = []
    for (_, spec, _), result in zip(steps[1:], chunks, strict=True):
        assert result["video"], f"chunk {spec['from_animation']} rendered no video"
        assert result["sounds"] == [] and not result["captions"]
        videos.append(Path(str(spec["out_dir"])) / "video.mp4")
    plan_out = Path(str(plan_spec["out_dir"]))
    sounds = [
        (plan_out / f"sound-{i:04d}.wav", time, to_background)
        for i, (time, to_background) in enumerate(plan["sounds"])  # type: ignore[arg-type]
    ]
    video = stitch_like_the_farm(videos, sounds, work / "stitched")
    srts = [(plan_out / "captions.srt").read_text()] if plan["captions"] else []
    return video, srts


def stitch_like_the_farm(
    parts: list[Path], sounds: list[tuple[Path, float, float | None]], dest: Path
) -> Path:
    """The farm's stitch (media jail): stream-copy concat, the one audio track, thumbnail."""
    from farm.config import load_settings
    from workers.media import stitch

    video, _, _ = stitch(load_settings({}), parts, dest, sounds=sounds)
    return video


def audio_md5s(video: Path) -> list[str] | None:
    """framemd5 lines of the first audio stream (timestamps, sizes, sample hashes), or None."""
    probe = S.run(
        [
            *("ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index"),
            *("-of", "csv=p=0", str(video)),
        ]
    )
    if not probe.stdout.strip():
        return None
    out = S.run(["ffmpeg", "-v", "error", "-i", str(video), "-map", "0:a:0", "-f", "framemd5", "-"])
    return [line for line in out.stdout.splitlines() if line and not line.startswith("#")]


def assert_same_as_plain(
    plain: Path, plain_srt: Path | None, farm: Path, farm_srts: list[str]
) -> None:
    plain_frames = S.frame_md5s(plain)
    assert plain_frames, "plain manim rendered no frames"
    assert S.frame_md5s(farm) == plain_frames
    assert audio_md5s(farm) == audio_md5s(plain)
    assert S.duration_s(farm) == S.duration_s(plain)
    expected = S.srt_entries(plain_srt.read_text()) if plain_srt else []
    assert sorted(e for text in farm_srts for e in S.srt_entries(text)) == expected


def plan_durations(code: str, class_name: str, work: Path) -> list[float]:
    """The farm's plan of a scene (one fresh process): each play's duration in the video."""
    result = S.runner_subprocess("plan", S.runner_spec(code, class_name, work), work)
    assert result["ok"], result
    return [float(d) for d in result["durations"]]  # type: ignore[attr-defined]


SPLITS = ["named"] + (["every"] if os.environ.get("FARM_CORPUS") == "all" else [])


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_scene_matches_plain_manim(path: Path, split: str, tmp_path: Path) -> None:
    # Given a scene rendered whole by plain manim with the farm's default seed
    class_name, bounds = corpus_meta(path)
    code = path.read_text()
    if split == "every":  # every drawn animation its own chunk
        durations = plan_durations(code, class_name, tmp_path / "plan")
        bounds = [i for i, d in enumerate(durations) if i > 0 and d > 0]
    plain, plain_srt = S.plain_manim_render(code, class_name, tmp_path / "plain")
    # When the farm renders it in chunks and stitches them
    farm, srts = farm_render(code, class_name, bounds, tmp_path / "farm")
    # Then frames, audio, duration and captions are plain manim's
    assert_same_as_plain(plain, plain_srt, farm, srts)


def test_corpus_is_large_enough_and_well_formed() -> None:
    assert len(CORPUS) >= 40
    names = [corpus_meta(p)[0] for p in CORPUS]
    assert len(set(names)) == len(names)


# --- dedicated tests: each failure of issue 12, split at the boundary that broke -------------


def corpus_scene(stem: str) -> tuple[str, str, list[int]]:
    path = CORPUS_DIR / f"{stem}.py"
    class_name, bounds = corpus_meta(path)
    return path.read_text(), class_name, bounds


def chunk_results(
    code: str, class_name: str, bounds: list[int], work: Path
) -> list[dict[str, object]]:
    edges: list[int | None] = [None, *bounds, None]
    return [
        _runner(
            "render",
            S.runner_spec(
                code,
                class_name,
                work / f"c{i}" / "out",
                from_animation=start,
                upto_animation=end,
            ),
            work / f"c{i}",
        )
        for i, (start, end) in enumerate(itertools.pairwise(edges))
    ]


@pytest.mark.slow
def test_sounds_are_owned_by_one_chunk_with_absolute_times_and_chunks_are_silent(
    tmp_path: Path,
) -> None:
    # Given a scene with a sound before the first play, one just before the play that starts
    # the second chunk, and one after the last play, split at that play
    code = """
import math, struct, tempfile, wave
from pathlib import Path
from manim import *

def beep():
    path = Path(tempfile.mkdtemp()) / "b.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", (i % 40) * 500) for i in range(800)))
    return str(path)

class Boundaries(Scene):
    def construct(self):
        b = beep()
        self.add_sound(b)
        self.play(Create(Square()), run_time=0.4)
        self.add_sound(b, time_offset=0.02)
        self.play(FadeIn(Circle()), run_time=0.4)
        self.add_sound(b)
"""
    results = chunk_results(code, "Boundaries", [1], tmp_path)
    # Then each sound is reported once, by the chunk that owns it, at its absolute scene time
    times = [[s[0] for s in r["sounds"]] for r in results]  # type: ignore[attr-defined]
    assert times == [[0.0, pytest.approx(6 / S.FPS + 0.02)], [pytest.approx(12 / S.FPS)]]
    # And no chunk video carries audio: the stitch builds the one track
    videos = [tmp_path / f"c{i}" / "out" / "video.mp4" for i in range(len(results))]
    assert all(audio_md5s(video) is None for video in videos)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stem",
    [
        "c21_sound_before_first_play",  # came back in every chunk
        "c22_sound_at_boundary",  # landed in the previous chunk
        "c23_sound_after_last_play",  # ran past the end of the video
        "c24_sound_only_last_chunk",  # came back with no audio stream at all
    ],
)
def test_sound_split_at_the_boundary_that_broke(stem: str, tmp_path: Path) -> None:
    code, class_name, bounds = corpus_scene(stem)
    plain, _ = S.plain_manim_render(code, class_name, tmp_path / "plain")
    farm, _ = farm_render(code, class_name, bounds, tmp_path / "farm")
    expected = audio_md5s(plain)
    assert expected, "plain manim wrote an audio stream"
    assert audio_md5s(farm) == expected
    assert S.duration_s(farm) == S.duration_s(plain)


@pytest.mark.slow
def test_skipped_opening_section_is_planned_into_no_chunk_of_its_own(tmp_path: Path) -> None:
    from farm.planner import plan_chunks

    code, class_name, _ = corpus_scene("c26_section_skip_opening")
    # Given the plan of a scene whose opening section skips its two plays
    durations = plan_durations(code, class_name, tmp_path / "plan")
    # Then the skipped plays take no time in the video
    assert durations[:2] == [0.0, 0.0] and all(d > 0 for d in durations[2:])
    # And however the planner splits it, every chunk renders frames
    for parallelism in (2, 3):
        chunks = plan_chunks(durations, S.FPS, parallelism=parallelism, min_chunk_seconds=0.1)
        assert len(chunks) == parallelism
        bounds = [c.first for c in chunks[1:]]
        farm, _ = farm_render(code, class_name, bounds, tmp_path / f"farm{parallelism}")
        plain, _ = S.plain_manim_render(code, class_name, tmp_path / "plain")
        assert S.frame_md5s(farm) == S.frame_md5s(plain)


@pytest.mark.slow
def test_time_updater_after_a_skipped_section_matches_plain_unsplit_and_split(
    tmp_path: Path,
) -> None:
    code, class_name, bounds = corpus_scene("c27_section_skip_updater")
    plain, _ = S.plain_manim_render(code, class_name, tmp_path / "plain")
    expected = S.frame_md5s(plain)
    for split in ([], bounds):
        farm, _ = farm_render(code, class_name, split, tmp_path / f"farm{len(split)}")
        assert S.frame_md5s(farm) == expected, f"split at {split}"


@pytest.mark.slow
def test_chunk_of_images_and_zoom_renders(tmp_path: Path) -> None:
    # ImageMobject and ZoomedScene failed only in chunks (Pillow 13); split mid-scene
    code, class_name, bounds = corpus_scene("c06_zoomed")
    plain, _ = S.plain_manim_render(code, class_name, tmp_path / "plain")
    farm, _ = farm_render(code, class_name, bounds, tmp_path / "farm")
    assert S.frame_md5s(farm) == S.frame_md5s(plain)


def test_render_environment_is_the_pinned_one() -> None:
    # The render path's packages are installed at the versions constraints.txt locks
    from importlib.metadata import version

    render = {"manim", "pillow", "numpy", "scipy", "pycairo", "manimpango", "moderngl", "av"}
    render |= {"skia-pathops", "svgelements", "pygments", "pydub", "srt", "mapbox-earcut"}
    locked = dict(
        line.split("==", 1)
        for line in (S.REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {n: v for n, v in locked.items() if n.lower().replace("_", "-") in render}
    assert len(pins) == len(render)
    assert {name: version(name) for name in pins} == pins
    assert int(version("pillow").split(".")[0]) < 13  # 13 rejects manim 0.22's RGBA fromarray


@pytest.mark.slow
def test_a_job_seed_matches_manim_seed(tmp_path: Path) -> None:
    code, class_name, bounds = corpus_scene("c17_random")
    plain7, _ = S.plain_manim_render(code, class_name, tmp_path / "plain7", seed=7)
    farm7, _ = farm_render(code, class_name, bounds, tmp_path / "farm7", seed=7)
    farm0, _ = farm_render(code, class_name, bounds, tmp_path / "farm0")
    assert S.frame_md5s(farm7) == S.frame_md5s(plain7)
    assert S.frame_md5s(farm0) != S.frame_md5s(plain7)


def test_still_scene_fails_with_a_message_that_says_why(tmp_path: Path) -> None:
    code = "from manim import *\n\nclass Still(Scene):\n    def construct(self):\n"
    code += "        self.add(Circle())\n"
    result = S.runner_subprocess("plan", S.runner_spec(code, "Still", tmp_path), tmp_path)
    assert result["ok"] is False and result["scene_error"] is True
    assert "PNG" in str(result["error"]) and "self.wait()" in str(result["error"])


def test_scene_skipping_every_play_fails_in_its_plan(tmp_path: Path) -> None:
    code = (
        "from manim import *\n\nclass AllSkipped(Scene):\n    def construct(self):\n"
        "        self.next_section(skip_animations=True)\n"
        "        self.play(Create(Circle()), run_time=0.3)\n"
    )
    result = S.runner_subprocess("plan", S.runner_spec(code, "AllSkipped", tmp_path), tmp_path)
    assert result["scene_error"] is True
    assert "skip_animations=True" in str(result["error"])


@pytest.mark.parametrize(("seed", "status"), [(7, 202), (2**32 - 1, 202), (-1, 400), (2**32, 400)])
def test_api_takes_an_optional_seed(
    client: Any, api_key: Any, pool: Any, seed: int, status: int
) -> None:
    body = {"code": "from manim import *\n", "className": "S", "quality": "low", "seed": seed}
    response = client.post("/api/v2/render", json=body, headers=api_key.headers)
    assert response.status_code == status, response.get_json()
    if status == 202:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT seed FROM jobs WHERE id = %s", (response.get_json()["jobId"],)
            ).fetchone()
        assert row["seed"] == seed


# --- the farm end to end: API, plan, chunks in jails, S3, stitch in a media jail ----------------

LOW = (854, 480)  # the farm's `low` is 854x480 at 15 fps


def farm_job_video(client: Any, key: Any, code: str, cls: str, work: Path) -> tuple[Path, dict]:
    from tests.conftest import submit, wait_for
    from tests.support import download

    job_id = submit(client, key, S.uncached(code), cls)
    job = wait_for(client, key, job_id, timeout=300)
    assert job["status"] == "completed", job
    work.mkdir(parents=True, exist_ok=True)
    return download(job["result"]["video"], work / "farm.mp4"), job


@pytest.mark.slow
@pytest.mark.parametrize(
    "stem", ["c20_sound_every_chunk", "c26_section_skip_opening", "c19_subcaptions"]
)
def test_the_farm_end_to_end_is_plain_manim(
    stem: str, worker: Any, client: Any, api_key: Any, pool: Any, tmp_path: Path
) -> None:
    from tests.conftest import wait_until_idle

    code, cls, _ = corpus_scene(stem)
    wait_until_idle(pool)  # every slot free: the job is split
    farm, job = farm_job_video(client, api_key, code, cls, tmp_path)
    assert job["progress"]["chunksTotal"] >= 2  # really split
    plain, plain_srt = S.plain_manim_render(code, cls, tmp_path / "plain", size=LOW, fps=15)
    assert S.frame_md5s(farm) == S.frame_md5s(plain)
    assert audio_md5s(farm) == audio_md5s(plain)
    assert S.duration_s(farm) == S.duration_s(plain)
    if plain_srt is not None:
        from tests.support import download

        vtt = download(job["result"]["captions"], tmp_path / "captions.vtt").read_text()
        for _, _, text in S.srt_entries(plain_srt.read_text()):
            assert text in vtt
