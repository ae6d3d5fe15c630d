"""Tests for the jail program (runner.py, manim_patch.py): real manim renders, no mocks.

Renders are 426x240 at 15 fps (x264 wants even sizes) with run times under a second.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import scenes as S

from workers.jail.program import manim_patch
from workers.jail.program.runner import RenderSpec, SceneError, plan_scene, render_scene


def spec_for(code: str, class_name: str, out_dir: Path, **kwargs: object) -> RenderSpec:
    fields: dict[str, object] = dict(
        code=code,
        class_name=class_name,
        width=S.WIDTH,
        height=S.HEIGHT,
        fps=S.FPS,
        portrait=False,
        out_dir=str(out_dir),
    )
    fields.update(kwargs)
    return RenderSpec(**fields)  # type: ignore[arg-type]


# --- the patched behaviours, one test each ----------------------------------------
#
# A probe scene logs what its updaters and the scene clock see.  Rendering it whole
# and rendering only its last animations (everything before is skipped) must log the
# same thing, because the skipped animations are simulated frame by frame.

PROBE = """
import json
from manim import *

class Probe(Scene):
    def construct(self):
        log = []
        sq = Square()
        sq.add_updater(lambda m, dt: log.append(["dt", dt]))
        self.add(sq)
        self.play(sq.animate.shift(RIGHT), run_time=0.53)
        log.append(["time", self.time])
        self.wait(0.37)
        log.append(["time", self.time])
        self.pause(0.45)
        log.append(["time", self.time])
        self.play(sq.animate.shift(LEFT), run_time=0.29)
        log.append(["time", self.time])
        with open(LOG_PATH, "w") as f:
            json.dump(log, f)
"""


def probe_log(tmp_path: Path, name: str, **range_: int) -> list[list[object]]:
    log_path = tmp_path / f"{name}.json"
    code = f"LOG_PATH = {str(log_path)!r}\n" + PROBE
    render_scene(spec_for(code, "Probe", tmp_path / name, **range_))
    log: list[list[object]] = json.loads(log_path.read_text())
    return log


@pytest.fixture(scope="module")
def probe_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[object]]]:
    # Given the probe rendered whole, and rendered with only its last animation drawn
    tmp = tmp_path_factory.mktemp("probe")
    return {
        "rendered": probe_log(tmp, "full"),
        "skipped": probe_log(tmp, "tail", from_animation=3),
    }


def test_updater_dt_sequence_while_skipping_equals_rendered(
    probe_logs: dict[str, list[list[object]]],
) -> None:
    # Then updaters saw one call per frame with dt = 1/fps, skipped or not, plus the
    # update_mobjects(0) a rendered play ends with.
    dts = [[e for e in log if e[0] == "dt"] for log in probe_logs.values()]
    assert dts[0] == dts[1]
    values = [e[1] for e in dts[0]]
    assert values.count(0) >= 2  # the closing update_mobjects(0) of each play
    assert max(values) == pytest.approx(1 / S.FPS)  # never one dt=run_time step


def test_scene_time_after_skipped_play_equals_rendered(
    probe_logs: dict[str, list[list[object]]],
) -> None:
    times = [[e[1] for e in log if e[0] == "time"] for log in probe_logs.values()]
    assert times[0] == times[1]  # bit-identical floats
    # 0.53 s is not a whole number of frames: rendered as 8 frames, 0.5333 s.
    assert times[0][0] == pytest.approx(8 / S.FPS)


def test_frozen_wait_advances_whole_frames(probe_logs: dict[str, list[list[object]]]) -> None:
    times = [e[1] for e in probe_logs["skipped"] if e[0] == "time"]
    # pause(0.45) is int(0.45 * 15) = 6 frames in the video, and on the clock.
    assert times[2] - times[1] == pytest.approx(int(0.45 * S.FPS) / S.FPS)


def test_apply_exact_skipping_is_idempotent_and_pinned() -> None:
    manim_patch.apply_exact_skipping()
    from manim.scene.scene import Scene

    patched = Scene.get_time_progression
    manim_patch.apply_exact_skipping()
    assert Scene.get_time_progression is patched
    manim_patch.check_manim_version()  # the installed manim is the pinned one


# --- plan -------------------------------------------------------------------------


def test_plan_scene_returns_each_animation_duration(tmp_path: Path) -> None:
    durations = plan_scene(spec_for(S.MULTI_WAIT, "MultiWait", tmp_path))
    # run times 0.53, 0.37, 0.71, 0.45 (frozen), 0.62, 0.3, 0.44 as whole frames at 15 fps
    assert [round(d * S.FPS) for d in durations] == [8, 5, 11, 6, 10, 4, 7]
    assert list(tmp_path.iterdir()) == []  # planning writes nothing


def test_range_video_is_exactly_its_animations(tmp_path: Path) -> None:
    spec = spec_for(S.MULTI_WAIT, "MultiWait", tmp_path, from_animation=2, upto_animation=5)
    durations = plan_scene(spec)
    out = render_scene(spec)
    assert out.animations == 3
    assert out.frames == round(sum(durations[2:5]) * S.FPS) == 27
    assert out.video is not None and out.srt is None
    assert len(S.frame_md5s(Path(out.video))) == out.frames
    assert Path(out.video).is_relative_to(tmp_path)


# --- chunks stitch to the frames of a plain full render ---------------------------

CHUNKED = [
    pytest.param(S.MULTI_WAIT, "MultiWait", [2, 4], False, id="multi-wait"),
    pytest.param(S.DT_UPDATER, "DtUpdater", [1, 3], False, id="dt-updater"),
    pytest.param(S.VALUE_TRACKER, "Tracker", [1, 4], False, id="value-tracker"),
    pytest.param(S.TRANSFORM_CHAIN, "TransformChain", [2, 4], False, id="transform-chain"),
    pytest.param(S.SUBCAPTIONS, "Captions", [2, 4], False, id="subcaptions"),
    pytest.param(S.PORTRAIT, "Portrait", [1, 3], True, id="portrait"),
]


def render_chunks(
    code: str,
    class_name: str,
    bounds: list[int],
    portrait: bool,
    work: Path,
    renderer: str = "cairo",
) -> tuple[Path, list[str]]:
    """Render [0,b1), [b1,b2), ... [bn,end) each in a fresh process; return (video, srts)."""
    width, height = (S.HEIGHT, S.WIDTH) if portrait else (S.WIDTH, S.HEIGHT)
    edges: list[int | None] = [None, *bounds, None]
    videos, srts = [], []
    for i, (start, end) in enumerate(itertools.pairwise(edges)):
        out_dir = work / f"chunk{i}"
        result = S.runner_subprocess(
            "render",
            {
                "code": code,
                "class_name": class_name,
                "width": width,
                "height": height,
                "fps": S.FPS,
                "portrait": portrait,
                "out_dir": str(out_dir),
                "from_animation": start,
                "upto_animation": end,
                "renderer": renderer,
            },
            out_dir,
        )
        assert result["ok"], result
        assert result["video"] is True
        videos.append(out_dir / "video.mp4")  # the name the worker chose, not the scene
        if result["captions"]:
            srts.append((out_dir / "captions.srt").read_text())
    return S.concat_videos(videos, work / "stitched.mp4"), srts


@pytest.mark.slow
@pytest.mark.parametrize(("code", "class_name", "bounds", "portrait"), CHUNKED)
def test_chunks_stitch_to_plain_full_render(
    tmp_path: Path,
    code: str,
    class_name: str,
    bounds: list[int],
    portrait: bool,
) -> None:
    # Given the scene rendered whole by the stock manim CLI
    plain, plain_srt = S.plain_manim_render(code, class_name, tmp_path / "plain", portrait=portrait)
    # When it is rendered as chunks in separate processes and stitched with -c copy
    stitched, chunk_srts = render_chunks(code, class_name, bounds, portrait, tmp_path)
    # Then the decoded frames and the duration are identical
    plain_md5s = S.frame_md5s(plain)
    assert S.frame_md5s(stitched) == plain_md5s
    assert len(set(plain_md5s)) > len(plain_md5s) // 2  # the scene really moves
    assert S.duration_s(stitched) == S.duration_s(plain)
    # And the chunks' subcaptions, merged, are the plain render's
    if plain_srt is None:
        assert chunk_srts == []
    else:
        merged = sorted(e for text in chunk_srts for e in S.srt_entries(text))
        assert merged == S.srt_entries(plain_srt.read_text())
        assert len(chunk_srts) == len(bounds) + 1  # every chunk owns some


@pytest.mark.slow
def test_opengl_chunks_stitch_to_plain_opengl_render(tmp_path: Path) -> None:
    code, class_name, bounds = S.DT_UPDATER, "DtUpdater", [1, 3]
    try:
        import moderngl

        moderngl.create_context(standalone=True, backend="egl").release()
    except Exception as exc:  # no EGL driver (libegl1 + libgl1-mesa-dri) on this host
        pytest.skip(f"no headless OpenGL (EGL) context: {exc}")
    plain, _ = S.plain_manim_render(code, class_name, tmp_path / "plain", renderer="opengl")
    stitched, _ = render_chunks(code, class_name, bounds, False, tmp_path, renderer="opengl")
    plain_md5s = S.frame_md5s(plain)
    assert S.frame_md5s(stitched) == plain_md5s
    assert len(set(plain_md5s)) > len(plain_md5s) // 2
    assert S.duration_s(stitched) == S.duration_s(plain)


# --- the scene's own errors --------------------------------------------------------


def scene_error(code: str, class_name: str, tmp_path: Path) -> str:
    with pytest.raises(SceneError) as info:
        render_scene(spec_for(textwrap.dedent(code), class_name, tmp_path))
    return str(info.value)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = scene_error(
        """
        from manim import *
        class Broken(Scene):
            def construct(self)
                pass
    """,
        "Broken",
        tmp_path,
    )
    assert "SyntaxError" in message
    assert 'File "scene.py", line 4' in message
    assert "def construct(self)" in message


def test_exception_in_construct_shows_only_user_frames(tmp_path: Path) -> None:
    message = scene_error(
        """
        from manim import *
        def ratio(a, b):
            return a / b
        class Crash(Scene):
            def construct(self):
                self.play(Create(Square()), run_time=0.2)
                ratio(1, 0)
    """,
        "Crash",
        tmp_path,
    )
    assert message.startswith("Traceback (most recent call last):")
    assert 'File "scene.py", line 8, in construct' in message
    assert 'File "scene.py", line 4, in ratio' in message
    assert "return a / b" in message
    assert message.endswith("ZeroDivisionError: division by zero")
    assert "manim" not in message and "workers" not in message


def test_error_raised_inside_manim_keeps_the_users_call(tmp_path: Path) -> None:
    message = scene_error(
        """
        from manim import *
        class Empty(Scene):
            def construct(self):
                self.play()
    """,
        "Empty",
        tmp_path,
    )
    assert 'File "scene.py", line 5, in construct' in message
    assert "ValueError: Called Scene.play with no animations" in message
    assert "site-packages" not in message


def test_exception_at_import_is_a_scene_error(tmp_path: Path) -> None:
    message = scene_error("import no_such_module_xyz\n", "Anything", tmp_path)
    assert "ModuleNotFoundError" in message and 'File "scene.py", line 1' in message


def test_unknown_class_lists_available_scenes(tmp_path: Path) -> None:
    message = scene_error(
        """
        from manim import *
        class One(Scene):
            pass
        class Two(MovingCameraScene):
            pass
    """,
        "Foo",
        tmp_path,
    )
    assert "Scene class 'Foo' not found in the submitted code" in message
    assert "One, Two" in message
    assert "MovingCameraScene" not in message  # imported, not defined there


def test_class_that_is_not_a_scene(tmp_path: Path) -> None:
    message = scene_error("class Foo:\n    pass\n", "Foo", tmp_path)
    assert "'Foo'" in message and "not a Scene subclass" in message


def test_scene_without_animations(tmp_path: Path) -> None:
    message = scene_error(
        """
        from manim import *
        class Still(Scene):
            def construct(self):
                self.add(Square())
    """,
        "Still",
        tmp_path,
    )
    assert "no animations" in message


# --- command line ------------------------------------------------------------------


def test_cli_plan_render_and_scene_error(tmp_path: Path) -> None:
    base = {
        "code": S.TRANSFORM_CHAIN,
        "class_name": "TransformChain",
        "width": S.WIDTH,
        "height": S.HEIGHT,
        "fps": S.FPS,
        "portrait": False,
    }
    plan = S.runner_subprocess("plan", {**base, "out_dir": str(tmp_path / "p")}, tmp_path / "p")
    assert plan["ok"] is True and plan["returncode"] == 0
    assert plan["durations"] == pytest.approx([8 / 15, 6 / 15, 6 / 15, 6 / 15, 6 / 15, 9 / 15])

    render = S.runner_subprocess(
        "render",
        {**base, "out_dir": str(tmp_path / "r"), "from_animation": 4},
        tmp_path / "r",
    )
    assert render["ok"] is True and render["returncode"] == 0
    assert (render["frames"], render["animations"], render["captions"]) == (15, 2, False)
    assert render["video"] is True and (tmp_path / "r" / "video.mp4").is_file()

    broken = S.runner_subprocess(
        "render",
        {**base, "class_name": "Nope", "out_dir": str(tmp_path / "e")},
        tmp_path / "e",
    )
    assert broken["ok"] is False and broken["returncode"] == 2
    assert "Scene class 'Nope' not found" in str(broken["error"])


def test_invalid_range_is_not_a_scene_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="upto_animation must be > from_animation"):
        render_scene(
            spec_for(S.MULTI_WAIT, "MultiWait", tmp_path, from_animation=3, upto_animation=3)
        )


def test_movies_do_not_depend_on_the_cpus_the_render_may_use(tmp_path: Path) -> None:
    # libx264 takes its thread count from the CPUs the process may use, and its bytes depend
    # on it; a movie from the animation cache must be the one any node would have drawn
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to render on one and on more")

    def frames_on(allowed: set[int], name: str) -> list[str]:
        out = tmp_path / name
        out.mkdir()
        spec = out / "spec.json"
        spec.write_text(json.dumps(S.runner_spec(S.TRANSFORM_CHAIN, "TransformChain", out)))
        subprocess.run(
            [sys.executable, "-m", S.RUNNER, "render", str(spec), str(out / "result.json")],
            cwd=S.REPO,
            check=True,
            capture_output=True,
            timeout=120,
            preexec_fn=lambda: os.sched_setaffinity(0, allowed),
        )
        return S.frame_md5s(out / "video.mp4")

    assert frames_on({min(cpus)}, "one") == frames_on(cpus, "all")
