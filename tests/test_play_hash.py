"""The animation cache's keys are manim's own play hashes: the runner computes them with
workers/jail/program/play_hash.py, a faster walk of the same objects, and this checks that it
gives manim's digest on every play of every corpus scene and of the benchmark scene, through
the runner's own plan (the path a worker runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import scenes as S
from manim.utils import hashing
from test_fidelity import CORPUS, corpus_meta

from workers.jail.program import play_hash
from workers.jail.program.runner import RenderSpec, plan_scene_full

BENCH_SCENE = S.REPO / "ops" / "bench" / "scene.py"


@pytest.mark.parametrize(
    "path", [*CORPUS, BENCH_SCENE], ids=lambda p: "benchmark" if p == BENCH_SCENE else p.stem
)
# Why: some scenes leave files open (their own code, run in this process here, not in a jail).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_runners_play_hash_is_manims_digest(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class_name = corpus_meta(path)[0] if path != BENCH_SCENE else "Benchmark"
    pairs: list[tuple[str, str]] = []
    ours = play_hash.get_hash_from_play_call

    def both(*args: Any, **kwargs: Any) -> str:
        digest = ours(*args, **kwargs)
        pairs.append((digest, hashing.get_hash_from_play_call(*args, **kwargs)))
        return digest

    monkeypatch.setattr(play_hash, "get_hash_from_play_call", both)
    monkeypatch.chdir(tmp_path)
    plan = plan_scene_full(
        RenderSpec(
            code=path.read_text(),
            class_name=class_name,
            width=S.WIDTH,
            height=S.HEIGHT,
            fps=S.FPS,
            portrait=False,
            out_dir=str(tmp_path / "out"),
            hash_plays=True,
        )
    )
    hashed = [h for h in plan.hashes if h is not None]
    assert hashed, "the plan hashed no play"
    assert [ours for ours, _ in pairs] == hashed
    assert [manims for _, manims in pairs] == hashed


def test_a_changed_object_anywhere_changes_the_digest() -> None:
    """The walk reaches what manim's reaches: a point, a colour, a nested attribute."""
    from manim import BLUE, GREEN, Camera, Circle, FadeIn, Square, VGroup

    def digest(*mobjects: Any) -> str:
        return play_hash.get_hash_from_play_call(
            object(),
            Camera(),
            [FadeIn(m) for m in mobjects],
            list(mobjects),
            backend="cairo",
            encoder_fingerprint="farm",
            renderer_state=(),
        )

    base = digest(VGroup(Square(), Circle()))
    assert digest(VGroup(Square(), Circle())) == base
    assert digest(VGroup(Square().shift((1e-9, 0.0, 0.0)), Circle())) != base
    assert digest(VGroup(Square(), Circle(color=GREEN))) != base
    assert digest(VGroup(Square(), Circle().set_fill(BLUE, 0.5))) != base
