"""Render: one chunk (animations [first, last)) in a warm jail, checked in a media jail."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from farm import anim_cache, assets, jobs, metrics, objects
from workers import media, outcomes
from workers.jail import outputs
from workers.jail.jail import Jail
from workers.lifecycle import Step
from workers.outcomes import Outcome, SceneFault
from workers.routing import queue_for
from workers.steps import (
    asked_urls,
    play_movie_name,
    provide_assets,
    scene_spec,
    store_log,
    store_plays,
)
from workers.steps.stitch import stitch_here

log = logging.getLogger("farm.worker")

CAPTIONS_BYTES = 10 * 2**20


def _planned_urls(step: Step, job_id: str) -> list[str]:
    """The URLs the job's plan fetched (its chunks get the same)."""
    try:
        raw = step.rt.storage.get_bytes(assets.manifest_key(job_id))
    except FileNotFoundError:
        return []
    return [str(url) for url in json.loads(raw)]


def render(step: Step) -> Outcome:
    rt, claim = step.rt, step.claim
    settings = rt.settings
    with step.conn() as conn:
        job = jobs.get_job(conn, claim.job_id)
        planned = jobs.planned_frames(conn, claim)
        plays = anim_cache.job_plays(conn, claim.job_id)
    spec = scene_spec(job, job["renderer"] or settings.renderer, settings.max_inflight_encoders)
    if job["chunks_total"] and job["chunks_total"] > 1:
        spec.update(from_animation=claim.first_animation, upto_animation=claim.last_animation)
    # The animation cache: the plays of this range the owner's cache holds are simulated, not
    # drawn; every drawn play's movie comes back on its own for the cache and the stitch.
    caching = plays is not None and settings.anim_cache and spec["renderer"] == "cairo"
    if caching and plays is not None:
        first = claim.first_animation or 0
        last = claim.last_animation if claim.last_animation is not None else len(plays)
        spec["hash_plays"] = True
        # Cached ones, and those the plan drew while it planned.
        spec["skip_plays"] = [
            i for i in range(first, last) if plays[i]["cached"] or plays[i].get("object")
        ]
    # Length comes from frames, never from the plan alone: at most the plan's frames, and never
    # more than the longest video a job may have.
    max_frames = settings.max_scene_seconds * job["fps"]
    if planned is not None:
        max_frames = min(max_frames, planned)
    limits = rt.jails.limits
    urls = _planned_urls(step, claim.job_id)
    metrics.CHUNKS_IN_FLIGHT.inc()
    started = time.perf_counter()
    written: list[str] = []
    try:
        with rt.jails.take() as jail:
            # Any age: every chunk must see the bytes the plan saw.
            provide_assets(step, job, urls, jail, any_age=True)
            run = jail.run("render", spec, step.keep_going, settings.heartbeat_seconds)
            asked = asked_urls(step, jail)
            if asked:
                raise assets.AssetRefused(
                    asked[0], "the scene asked for it while rendering but not while planning"
                )
            failed = outcomes.of_run(run, limits)
            if isinstance(failed, outcomes.Stopped):
                return failed
            if spec["renderer"] == "opengl" and isinstance(failed, SceneFault):
                with step.conn() as conn:
                    again = jobs.fall_back_to_cairo(conn, claim)
                log.warning("chunk failed under OpenGL; the job renders again with cairo")
                for chunk in again:
                    rt.publisher.step(claim.job_id, "chunk", chunk, claim.quality)
                return outcomes.Done()
            log_key = store_log(step, run)
            written.append(log_key)
            if failed is not None:
                return outcomes.with_log(failed, log_key)
            assert run.report is not None
            report = outputs.parse_render(run.report, max_frames)
            if not report["video"]:
                return SceneFault("the scene rendered no frames (no play() or wait() in range)")
            video = jail.copy_out("video.mp4", settings.max_output_mb * 2**20, "chunk video")
            if video is None:
                return SceneFault("the render produced no chunk video")
            captions = None
            if report["captions"]:
                captions = jail.copy_out("captions.srt", CAPTIONS_BYTES, "captions")
            movies = _copy_plays(step, jail, report["plays"]) if caching else {}
            return finish_chunk(
                step, job, video, captions, max_frames, movies, report["plays"], plays,
                log_key, written, started,
            )  # fmt: skip
    finally:
        metrics.CHUNKS_IN_FLIGHT.dec()


def finish_chunk(
    step: Step,
    job: dict[str, Any],
    video: Path,
    captions: Path | None,
    max_frames: int,
    movies: dict[int, Path],
    drawn: list[tuple[int, int, str | None]],
    plays: list[dict[str, Any]] | None,
    log_key: str,
    written: list[str],
    started: float,
) -> Outcome:
    """The end of every chunk, whoever drew it: check its video in a media jail, upload it and
    each drawn play's movie (``movies``, for the animation cache), record the chunk, and stitch
    here after the last one. ``written``: what this attempt stored so far (its log at
    ``log_key``), all deleted if the attempt turns out to have lost the chunk. ``started``:
    when the chunk began to render (``time.perf_counter``)."""
    rt, claim, settings = step.rt, step.claim, step.rt.settings
    info, cues = media.check_chunk(
        settings,
        video,
        captions,
        width=job["width"],
        height=job["height"],
        fps=job["fps"],
        max_frames=max_frames,
        keep_going=step.keep_going,
    )
    video_key = objects.chunk_video(claim.job_id, claim.idx, claim.attempt)
    rt.storage.put_file(video_key, str(video), "video/mp4")
    written.append(video_key)
    stored = store_plays(step, job, movies, drawn, plays)
    cues_key = None
    if cues:
        cues_key = objects.chunk_cues(claim.job_id, claim.idx, claim.attempt)
        body = json.dumps([[c.start_ms, c.end_ms, c.text] for c in cues]).encode()
        rt.storage.put_bytes(cues_key, body, "application/json")
        written.append(cues_key)
    with step.conn() as conn:
        ready = jobs.record_chunk(conn, claim, video_key, cues_key, info.frames, log_key)
        if ready is not None:
            for index, object_key in stored.items():
                anim_cache.set_play_object(conn, claim.job_id, index, object_key)
    if ready is None:
        # A zombie attempt: another owns the chunk now; leave no trace.
        for key in written:
            rt.storage.delete_prefix(key)  # the full key: exactly this object
        log.info("chunk attempt %s lost its step; its objects were deleted", claim.attempt)
        return outcomes.Done()
    metrics.CHUNK_RENDER_SECONDS.labels(quality=claim.quality).observe(
        time.perf_counter() - started
    )
    metrics.CHUNKS_RENDERED.labels(queue=queue_for("chunk", claim.quality)).inc()
    metrics.FRAMES_RENDERED.labels(quality=claim.quality).inc(info.frames)
    if ready:
        # The last chunk stitches where it rendered: no queue hop, and the next jail of this
        # process starts only after it (its import would share this node's CPU with the join).
        # Should this worker die first, `farm scheduler` re-queues the stitch step it created.
        stitch_here(rt, claim.job_id)
    return outcomes.Done()


def _copy_plays(
    step: Step, jail: Jail, drawn: list[tuple[int, int, str | None]]
) -> dict[int, Path]:
    """Copy each drawn play's movie out of the jail, for the owner's animation cache."""
    max_bytes = step.rt.settings.max_output_mb * 2**20
    movies = {}
    for index, frames, play_hash in drawn:
        if play_hash is not None and frames > 0:
            movie = jail.copy_out(play_movie_name(index), max_bytes, "animation movie")
            if movie is not None:
                movies[index] = movie
    return movies
