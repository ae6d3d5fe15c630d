"""The shared animation cache: keys, scopes, lookups and eviction (real PostgreSQL), and that a
hit never changes a video (real renders, cache cold and warm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from farm import anim_cache
from tests.conftest import unique

BASE: dict[str, Any] = dict(
    width=854, height=480, fps=15, renderer="cairo", seed=0, environment="env-1"
)


@pytest.mark.parametrize(
    "change",
    [
        {"width": 1280},
        {"height": 720},
        {"fps": 30},
        {"renderer": "opengl"},
        {"seed": 1},
        {"environment": "env-2"},  # another manim, patch, runner, plugin or package version
    ],
)
def test_everything_that_changes_pixels_changes_the_key(change: dict[str, Any]) -> None:
    base, changed = anim_cache.variant(**BASE), anim_cache.variant(**{**BASE, **change})
    assert changed != base
    assert anim_cache.cache_key("h", changed) != anim_cache.cache_key("h", base)
    assert anim_cache.cache_key("h2", base) != anim_cache.cache_key("h", base)
    assert anim_cache.cache_key("h", base) == anim_cache.cache_key("h", anim_cache.variant(**BASE))


def test_lookup_finds_only_the_owners_own_entries(pool: Any) -> None:
    mine, theirs = anim_cache.scope_of(f"user-{unique()}"), anim_cache.scope_of(f"u-{unique()}")
    variant, other_size = anim_cache.variant(**BASE), anim_cache.variant(**{**BASE, "fps": 30})
    play = unique()
    with pool.connection() as conn:
        assert anim_cache.held_hashes(conn, mine, variant) == []
        key = anim_cache.record(conn, mine, variant, play, size=1000, frames=12)
        assert key == anim_cache.cache_key(play, variant)
        assert anim_cache.lookup(conn, mine, [key, "other"]) == {key}
        assert anim_cache.lookup(conn, theirs, [key]) == set()
        # What a plan that renders may skip: the owner's plays, in this variant only
        assert anim_cache.held_hashes(conn, mine, variant) == [play]
        assert anim_cache.held_hashes(conn, mine, other_size) == []
        assert anim_cache.held_hashes(conn, theirs, variant) == []
    assert anim_cache.object_key(mine, key).startswith(f"{anim_cache.PREFIX}{mine}/")


def test_eviction_by_age_then_size_least_recently_used_first(pool: Any) -> None:
    scope, variant = anim_cache.scope_of(f"user-{unique()}"), anim_cache.variant(**BASE)
    with pool.connection() as conn:
        conn.execute("DELETE FROM anim_cache")
        keys = {}
        for name, age in (("old", 7200), ("a", 300), ("b", 200), ("c", 100)):
            keys[name] = anim_cache.record(conn, scope, variant, name, size=1000, frames=1)
            conn.execute(
                "UPDATE anim_cache SET last_used_at = now() - make_interval(secs => %s)"
                " WHERE key = %s",
                (age, keys[name]),
            )
        gone = anim_cache.evict(conn, max_age_seconds=3600, max_bytes=2000)
        assert sorted(gone) == sorted(anim_cache.object_key(scope, keys[k]) for k in ("old", "a"))
        left = conn.execute("SELECT play_hash FROM anim_cache ORDER BY play_hash").fetchall()
        assert [r["play_hash"] for r in left] == ["b", "c"]
        assert anim_cache.held_hashes(conn, scope, variant) == ["c", "b"]


def test_environment_fingerprint_covers_the_jail_program(tmp_path: Any) -> None:
    program = tmp_path / "runner.py"
    program.write_text("# v1\n")
    first = anim_cache.environment((program,))
    program.write_text("# v2\n")
    anim_cache.environment.cache_clear()
    assert anim_cache.environment((program,)) != first


# --- end to end: a hit never changes the video; what changes pixels misses ---------------------

CHAIN = Path(__file__).parent / "corpus" / "c13_transform_chain.py"


def _plays(pool: Any, job_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        plays = anim_cache.job_plays(conn, job_id)
    assert plays is not None
    return plays


def _job(client: Any, key: Any, code: str, cls: str, **fields: Any) -> dict[str, Any]:
    from tests.conftest import submit, wait_for

    job_id = submit(client, key, code, cls, **fields)
    job = wait_for(client, key, job_id, timeout=300)
    assert job["status"] == "completed", job
    return job


@pytest.mark.slow
def test_cache_cold_then_warm_then_edited_then_other_size(
    worker: Any, client: Any, api_key: Any, pool: Any, tmp_path: Any
) -> None:
    import scenes as S

    from tests.support import download

    code = CHAIN.read_text()
    marker = f"# owner run {unique()}\n"
    # Given the scene rendered once (cold: every animation drawn)
    cold = _job(client, api_key, code + marker, "TransformChain")
    plays = _plays(pool, cold["jobId"])
    assert len(plays) == 6 and not any(p["cached"] for p in plays)
    # When the same animations are asked for again (a new job: the result cache misses)
    warm = _job(client, api_key, code + marker + "# again\n", "TransformChain")
    # Then every animation comes from the cache, nothing is drawn, and the video is the same
    assert all(p["cached"] for p in _plays(pool, warm["jobId"]))
    assert warm["progress"]["chunksTotal"] == 0
    plain, _ = S.plain_manim_render(code, "TransformChain", tmp_path / "plain", size=(854, 480))
    expected = S.frame_md5s(plain)
    for job, name in ((cold, "cold"), (warm, "warm")):
        video = download(job["result"]["video"], tmp_path / f"{name}.mp4")
        assert S.frame_md5s(video) == expected, name
        assert S.duration_s(video) == S.duration_s(plain)
    # When only the last animation is edited
    edited = code.replace(
        "ReplacementTransform(m, Dot())", "ReplacementTransform(m, Dot(color=RED))"
    )
    assert edited != code
    job = _job(client, api_key, edited + marker, "TransformChain")
    # Then only it misses, and the video is plain manim's of the edited scene
    assert [p["cached"] for p in _plays(pool, job["jobId"])] == [True] * 5 + [False]
    plain_edit, _ = S.plain_manim_render(edited, "TransformChain", tmp_path / "pe", size=(854, 480))
    video = download(job["result"]["video"], tmp_path / "edited.mp4")
    assert S.frame_md5s(video) == S.frame_md5s(plain_edit)
    # And another resolution misses everywhere
    medium = _job(client, api_key, code + marker, "TransformChain", quality="medium")
    assert not any(p["cached"] for p in _plays(pool, medium["jobId"]))


def test_a_changed_mobject_or_camera_changes_the_play_hash(tmp_path: Any) -> None:
    import scenes as S

    code = CHAIN.read_text()

    def hashes(source: str, name: str) -> list[str | None]:
        spec = S.runner_spec(source, "TransformChain", tmp_path / name, hash_plays=True)
        result = S.runner_subprocess("plan", spec, tmp_path / name)
        assert result["ok"], result
        return result["hashes"]  # type: ignore[return-value]

    base = hashes(code, "base")
    assert all(base) and len(set(base)) == len(base)
    # A mobject changed in the third animation (its Transform target): that animation misses,
    # and so does the next (it starts from the changed square); earlier ones, and later ones
    # whose state is the same again, still hit
    mob = hashes(code.replace("Triangle(color=GREEN)", "Triangle(color=BLUE)"), "mob")
    assert mob[:2] == base[:2] and mob[2] != base[2] and mob[3] != base[3]
    # The camera (background) changed: every animation changes
    camera = hashes(
        code.replace("from manim import *", "from manim import *\nconfig.background_color = GREY"),
        "cam",
    )
    assert all(c != b for c, b in zip(camera, base, strict=True))


def test_the_stitch_joins_whole_chunk_videos_where_their_animations_follow_each_other() -> None:
    from workers.steps.stitch import _parts

    def play(i: int, **kind: Any) -> dict[str, Any]:
        return {"frames": 0 if kind.get("empty") else 6, "key": f"k{i}",
                "cached": bool(kind.get("cached")), "object": f"movie-{i}",
                **({"plan": True} if kind.get("plan") else {})}  # fmt: skip

    def chunk(idx: int, first: int, last: int | None) -> dict[str, Any]:
        return {"idx": idx, "output_key": f"chunk-{idx}", "first_animation": first,
                "last_animation": last, "frames": 12}  # fmt: skip

    def keys(parts: list[tuple[str, int | None]]) -> list[str]:
        return [key for key, _ in parts]

    # Given plays drawn by the plan (0), by chunk 0 (1, 2; 3 has no frames) and by chunk 1
    # (4, 5): each chunk's video stands in for its animations
    plays = [play(0, plan=True), play(1), play(2), play(3, empty=True), play(4), play(5)]
    chunks = [chunk(0, 0, 4), chunk(1, 4, None)]
    assert _parts("s", plays, chunks) == [("movie-0", 6), ("chunk-0", 12), ("chunk-1", 12)]
    # When a cached animation falls between a chunk's own, its video cannot be cut: that
    # chunk's animations are joined movie by movie, the other chunk's still whole
    plays[2] = play(2, cached=True)
    plays[3] = play(3)
    assert keys(_parts("s", plays, chunks)) == [
        "movie-0", "movie-1", anim_cache.object_key("s", "k2"), "movie-3", "chunk-1"
    ]  # fmt: skip
    # And a job without the plays' record joins its chunk videos in order
    assert keys(_parts("s", None, chunks)) == ["chunk-0", "chunk-1"]
    # A drawn animation that left no movie where one is needed is an error, not a gap
    del plays[1]["object"]
    with pytest.raises(RuntimeError):
        _parts("s", plays, chunks)
