"""The shared animation cache: keys, scopes, lookups and eviction (real PostgreSQL), and that a
hit never changes a video (real renders, cache cold and warm)."""

from __future__ import annotations

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
    assert anim_cache.cache_key("h", **{**BASE, **change}) != anim_cache.cache_key("h", **BASE)
    assert anim_cache.cache_key("h2", **BASE) != anim_cache.cache_key("h", **BASE)
    assert anim_cache.cache_key("h", **BASE) == anim_cache.cache_key("h", **BASE)


def test_lookup_finds_only_the_owners_own_entries(pool: Any) -> None:
    mine, theirs = anim_cache.scope_of(f"user-{unique()}"), anim_cache.scope_of(f"u-{unique()}")
    key = anim_cache.cache_key(unique(), **BASE)
    with pool.connection() as conn:
        assert anim_cache.lookup(conn, mine, [key]) == set()
        anim_cache.record(conn, mine, key, size=1000, frames=12)
        assert anim_cache.lookup(conn, mine, [key, "other"]) == {key}
        assert anim_cache.lookup(conn, theirs, [key]) == set()
    assert anim_cache.object_key(mine, key).startswith(f"{anim_cache.PREFIX}{mine}/")


def test_eviction_by_age_then_size_least_recently_used_first(pool: Any) -> None:
    scope = anim_cache.scope_of(f"user-{unique()}")
    with pool.connection() as conn:
        conn.execute("DELETE FROM anim_cache")
        for name, age in (("old", 7200), ("a", 300), ("b", 200), ("c", 100)):
            anim_cache.record(conn, scope, name, size=1000, frames=1)
            conn.execute(
                "UPDATE anim_cache SET last_used_at = now() - make_interval(secs => %s)"
                " WHERE key = %s",
                (age, name),
            )
        gone = anim_cache.evict(conn, max_age_seconds=3600, max_bytes=2000)
        assert sorted(gone) == sorted(anim_cache.object_key(scope, k) for k in ("old", "a"))
        left = conn.execute("SELECT key FROM anim_cache ORDER BY key").fetchall()
        assert [r["key"] for r in left] == ["b", "c"]


def test_environment_fingerprint_covers_the_jail_program(tmp_path: Any) -> None:
    program = tmp_path / "runner.py"
    program.write_text("# v1\n")
    first = anim_cache.environment((program,))
    program.write_text("# v2\n")
    anim_cache.environment.cache_clear()
    assert anim_cache.environment((program,)) != first
