"""The shared animation cache: each rendered play's movie, reused by any later job of the owner.

manim names a play's partial movie by a hash of the play call (camera, animations, the state of
every mobject). With the farm's exact skipping that state is the full render's in any chunk, so
the hash identifies the play's pixels given everything else that changes them: size, fps,
renderer, seed, and the render environment (manim, the farm's patch and runner, plugins and
every installed package: ``environment``). ``cache_key`` binds them together.

Entries are scoped per owner (a user, or a key without one): a job only ever reads movies its
own owner's jobs rendered. The index lives in PostgreSQL (``anim_cache``), the movies in object
storage under ``anim-cache/<scope>/<key>.mp4``; ``evict`` drops what is too old or beyond the
size budget, least recently used first.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from farm import objects
from farm.keys import Conn

PREFIX = "anim-cache/"

__all__ = [
    "PREFIX",
    "cache_key",
    "environment",
    "evict",
    "held_hashes",
    "job_plays",
    "lookup",
    "object_key",
    "plan_media",
    "record",
    "scope_of",
    "set_job_plays",
    "set_plan_media",
    "set_play_object",
    "variant",
]


@functools.cache
def environment(program_files: tuple[Path, ...]) -> str:
    """Fingerprint of what renders a play besides the scene: every installed distribution and
    its version (manim, plugins, Pillow, cairo's binding ...) and the bytes of the jail program
    (the farm's runner and manim patch). Any change starts a fresh cache."""
    digest = hashlib.sha256()
    dists = sorted(
        f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()
    )
    digest.update("\n".join(dists).encode())
    for path in sorted(program_files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def scope_of(owner: str) -> str:
    """The cache scope of an owner id (a user id, or an API key id for keys without a user)."""
    return hashlib.sha256(f"owner:{owner}".encode()).hexdigest()[:32]


def variant(
    *, width: int, height: int, fps: int, renderer: str, seed: int, environment: str
) -> str:
    """All that changes a play's pixels besides the play itself, as one digest."""
    material = json.dumps(
        {
            "size": [width, height],
            "fps": fps,
            "renderer": renderer,
            "seed": seed,
            "environment": environment,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def cache_key(play_hash: str, variant: str) -> str:
    """The key of one play's movie: manim's play hash in its variant (``variant``)."""
    return hashlib.sha256(f"{variant}:{play_hash}".encode()).hexdigest()


def object_key(scope: str, key: str) -> str:
    return objects.anim_movie(scope, key)


def lookup(conn: Conn, scope: str, keys: Iterable[str]) -> set[str]:
    """The keys among ``keys`` the scope has a movie for; marks them used now."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    rows = conn.execute(
        "UPDATE anim_cache SET last_used_at = now() WHERE scope = %s AND key = ANY(%s)"
        " RETURNING key",
        (scope, wanted),
    ).fetchall()
    return {r["key"] for r in rows}


def held_hashes(conn: Conn, scope: str, variant: str, limit: int = 20_000) -> list[str]:
    """manim hashes of the plays whose movie the scope holds in ``variant``, most recently used
    first (at most ``limit``): what a plan that renders need not draw."""
    rows = conn.execute(
        "SELECT play_hash FROM anim_cache WHERE scope = %s AND variant = %s"
        " AND play_hash IS NOT NULL ORDER BY last_used_at DESC LIMIT %s",
        (scope, variant, limit),
    ).fetchall()
    return [r["play_hash"] for r in rows]


def record(conn: Conn, scope: str, variant: str, play_hash: str, size: int, frames: int) -> str:
    """Index a movie just stored at ``object_key(scope, key)``; returns its key."""
    key = cache_key(play_hash, variant)
    conn.execute(
        "INSERT INTO anim_cache (scope, key, object_key, bytes, frames, variant, play_hash)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (scope, key) DO UPDATE SET last_used_at = now(), bytes = EXCLUDED.bytes,"
        " frames = EXCLUDED.frames",
        (scope, key, object_key(scope, key), size, frames, variant, play_hash),
    )
    return key


def evict(conn: Conn, *, max_age_seconds: float, max_bytes: int) -> list[str]:
    """Drop entries unused for ``max_age_seconds``, then the least recently used beyond
    ``max_bytes`` in all; returns their object keys for the caller to delete from storage."""
    old: list[dict[str, Any]] = conn.execute(
        "DELETE FROM anim_cache WHERE last_used_at < now() - make_interval(secs => %s)"
        " RETURNING object_key",
        (max_age_seconds,),
    ).fetchall()
    over: list[dict[str, Any]] = conn.execute(
        "DELETE FROM anim_cache WHERE (scope, key) IN ("
        "  SELECT scope, key FROM ("
        "    SELECT scope, key, sum(bytes) OVER (ORDER BY last_used_at DESC, key) AS running"
        "    FROM anim_cache) ranked WHERE running > %s)"
        " RETURNING object_key",
        (max_bytes,),
    ).fetchall()
    return [r["object_key"] for r in old + over]


def set_job_plays(conn: Conn, job_id: str, plays: list[dict[str, Any]]) -> None:
    """Per play of the job, in order: ``{"frames": n, "key": cache key or None}``."""
    conn.execute("UPDATE jobs SET plays = %s WHERE id = %s", (Jsonb(plays), job_id))


def job_plays(conn: Conn, job_id: str) -> list[dict[str, Any]] | None:
    row = conn.execute("SELECT plays FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else row["plays"]


def set_plan_media(
    conn: Conn,
    job_id: str,
    cues_key: str | None,
    sounds: list[tuple[str, float, float | None]],
    video_key: str | None = None,
) -> None:
    """The plan's captions (cue list key) and sounds (object key, time, gain_to_background),
    and its video when it drew every animation (the stitch's one part)."""
    media = {"cues": cues_key, "sounds": [list(s) for s in sounds], "video": video_key}
    conn.execute("UPDATE jobs SET plan_media = %s WHERE id = %s", (Jsonb(media), job_id))


def plan_media(conn: Conn, job_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT plan_media FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else row["plan_media"]


def set_play_object(conn: Conn, job_id: str, index: int, object_key: str) -> None:
    """Where play ``index`` of the job was stored by the chunk that drew it (one statement per
    play: concurrent chunks update the same row without losing each other's entries)."""
    conn.execute(
        "UPDATE jobs SET plays = jsonb_set(plays, %s, to_jsonb(%s::text)) WHERE id = %s",
        ([str(index), "object"], object_key, job_id),
    )
