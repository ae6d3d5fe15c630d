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

import pytest
import scenes as S

from workers.audio_mix import SoundAt, with_audio

CORPUS_DIR = S.REPO / "tests" / "corpus"
CORPUS = sorted(CORPUS_DIR.glob("c*.py"))
_META = re.compile(r"^# corpus: (?P<cls>\w+)(?: bounds=(?P<bounds>[\d,]+))?\s*$")


def corpus_meta(path: Path) -> tuple[str, list[int]]:
    """(scene class, chunk boundaries) from a corpus file's first line."""
    match = _META.match(path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must be '# corpus: Class bounds=1,3'"
    bounds = [int(b) for b in (match["bounds"] or "").split(",") if b]
    return match["cls"], bounds


def _runner(spec: dict[str, object], work: Path) -> dict[str, object]:
    """``python -m workers.scene_runner render`` in a fresh process (as the farm runs it)."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "workers.scene_runner", "render", str(spec_path), str(result_path)],
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
    """Render ranges [0,b1), [b1,b2) ... [bn,end) in parallel processes; stitch them like the farm.

    Returns the final video and each chunk's .srt text.
    """
    edges: list[int | None] = [None, *bounds, None]
    specs = [
        (
            {
                "code": code,
                "class_name": class_name,
                "width": S.WIDTH,
                "height": S.HEIGHT,
                "fps": S.FPS,
                "portrait": False,
                "out_dir": str(work / f"chunk{i}" / "out"),
                "from_animation": start,
                "upto_animation": end,
                "seed": seed,
            },
            work / f"chunk{i}",
        )
        for i, (start, end) in enumerate(itertools.pairwise(edges))
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: _runner(*a), specs))
    videos, srts, sounds = [], [], []
    for (spec, _), result in zip(specs, results, strict=True):
        assert result["video"], f"chunk {spec['from_animation']} rendered no video"
        videos.append(Path(str(result["video"])))
        if result["srt"]:
            srts.append(Path(str(result["srt"])).read_text())
        out_dir = Path(str(spec["out_dir"]))
        for sound in result["sounds"]:  # type: ignore[attr-defined]
            sounds.append(
                SoundAt(out_dir / sound["file"], sound["time"], sound["gain_to_background"])
            )
    video = S.concat_videos(videos, work / "video-only.mp4")
    final = work / "video.mp4"
    if not with_audio(video, sounds, final):
        final = video
    return final, srts


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
    result = S.runner_subprocess(
        "plan",
        {
            "code": code,
            "class_name": class_name,
            "width": S.WIDTH,
            "height": S.HEIGHT,
            "fps": S.FPS,
            "portrait": False,
            "out_dir": str(work),
        },
        work,
    )
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
