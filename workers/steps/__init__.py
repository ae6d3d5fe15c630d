"""One step per module: plan, render (a chunk), stitch, webhook. Each body is a plain function
of a ``workers.lifecycle.Step`` returning an outcome; the lifecycle does the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm import anim_cache, assets
from farm.config import Settings
from workers.jail.bwrap import PROGRAM_DIR
from workers.jail.jail import Jail, RunResult
from workers.lifecycle import Step


def scene_spec(job: dict[str, Any], renderer: str, inflight_encoders: int) -> dict[str, Any]:
    """What the jail's runner needs of a job (and nothing else of it)."""
    return {
        "max_inflight_encoders": inflight_encoders,
        "code": job["code"],
        "class_name": job["class_name"],
        "width": job["width"],
        "height": job["height"],
        "fps": job["fps"],
        "portrait": job["aspect_ratio"] == "9:16",
        "renderer": renderer,
        "seed": int(job.get("seed") or 0),
        # A range's subcaptions and sounds come from the plan (the whole scene's), never twice.
        "range_media": False,
    }


def cache_scope(settings: Settings, job: dict[str, Any]) -> str:
    """The animation cache scope of a job: its owner's, or one for all (FARM_CACHE_SCOPE)."""
    if settings.cache_scope == "global":
        return anim_cache.scope_of("*global*")
    return anim_cache.scope_of(str(job.get("user_id") or job["key_id"]))


def cache_variant(job: dict[str, Any], renderer: str) -> str:
    """What changes this job's pixels besides each play (``farm.anim_cache.variant``)."""
    return anim_cache.variant(
        width=job["width"],
        height=job["height"],
        fps=job["fps"],
        renderer=renderer,
        seed=int(job.get("seed") or 0),
        environment=cache_environment(),
    )


def cache_environment() -> str:
    """What the installed distributions and the jail program add to every cache key; read
    once per process (listing every distribution's metadata takes about 40 ms)."""
    return anim_cache.environment(tuple(sorted(PROGRAM_DIR.glob("*.py"))))


def play_cache_key(job: dict[str, Any], renderer: str, play_hash: str) -> str:
    """The cache key of one play of this job: manim's hash plus what else changes pixels."""
    return anim_cache.cache_key(play_hash, cache_variant(job, renderer))


def store_plays(
    step: Step,
    job: dict[str, Any],
    movies: dict[int, Path],
    drawn: list[tuple[int, int, str | None]],
    plays: list[dict[str, Any]] | None,
) -> dict[int, str]:
    """Put each drawn play's movie (``movies``: play index -> file copied out of the jail) in
    the owner's animation cache; returns {play: object key}.

    The key is the one this run computed: the scene's state as it reached the play (the
    plan's key when they agree, which is the rule). A play the plan gave no key is stored
    under none and the job is assembled from chunk videos instead.
    """
    rt = step.rt
    scope = cache_scope(rt.settings, job)
    variant = cache_variant(job, job["renderer"] or rt.settings.renderer)
    stored: dict[int, str] = {}
    for index, frames, play_hash in drawn:
        movie = movies.get(index)
        if plays is None or index >= len(plays) or play_hash is None or not frames or not movie:
            continue
        key = anim_cache.cache_key(play_hash, variant)
        object_key = anim_cache.object_key(scope, key)
        rt.storage.put_file(object_key, str(movie), "video/mp4")
        with step.conn() as conn:
            anim_cache.record(conn, scope, variant, play_hash, movie.stat().st_size, frames)
        stored[index] = object_key
    return stored


def play_movie_name(index: int) -> str:
    """Where the jail's runner leaves play ``index``'s own movie (runner.PLAY_PREFIX)."""
    return f"play-{index:04d}.mp4"


def provide_assets(
    step: Step, job: dict[str, Any], urls: list[str], jail: Jail, any_age: bool = False
) -> None:
    """Put the job's URLs into the jail's assets directory (the owner's cache, else fetched)."""
    assets.provide(
        urls,
        owner=str(job.get("user_id") or job["key_id"]),
        storage=step.rt.storage,
        policy=assets.Policy.from_settings(step.rt.settings),
        directory=jail.assets,
        max_age=None if any_age else -1,
        keep_going=step.keep_going,
    )


def asked_urls(step: Step, jail: Jail) -> list[str]:
    """The URLs the scene asked for that were not in its assets (read after the run)."""
    policy = assets.Policy.from_settings(step.rt.settings)
    return assets.read_misses(jail.scratch / assets.MISSES_FILE, policy)


def store_log(step: Step, run: RunResult) -> str:
    """Upload this attempt's log under its own key; returns the key."""
    from farm import objects

    claim = step.claim
    key = objects.step_log(claim.job_id, claim.kind, claim.idx, claim.attempt)
    step.rt.storage.put_bytes(key, run.log.encode(), "text/plain; charset=utf-8")
    return key
