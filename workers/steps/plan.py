"""Plan: run the scene with every animation skipped to learn its animations, then fan out."""

from __future__ import annotations

import json
import logging
import time

from farm import assets, jobs, metrics
from farm.planner import plan_chunks, skip_weight
from workers import outcomes
from workers.jail import outputs
from workers.jail.jail import RunResult
from workers.jail.limits import Limits
from workers.lifecycle import Step
from workers.outcomes import Outcome, SceneFault
from workers.steps import asked_urls, provide_assets, scene_spec, store_log

log = logging.getLogger("farm.worker")

# Plan passes that may fetch the URLs the previous pass asked for: a scene whose URLs depend on
# what earlier ones returned needs more than one.
ASSET_ROUNDS = 3


def _opengl_scene_error(run: RunResult, limits: Limits, renderer: str) -> bool:
    """An OpenGL run that failed on the scene: cairo, which supports more of manim, may not."""
    return renderer == "opengl" and isinstance(outcomes.of_run(run, limits), SceneFault)


def plan(step: Step) -> Outcome:
    rt, claim = step.rt, step.claim
    settings = rt.settings
    with step.conn() as conn:
        job = jobs.get_job(conn, claim.job_id)
        renderer = job["renderer"] or settings.renderer
        jobs.set_renderer(conn, claim.job_id, renderer)
    limits = rt.jails.limits.with_(wall_seconds=settings.plan_timeout_seconds)
    started = time.perf_counter()

    fetched: list[str] = []  # the URLs the scene asked for, fetched for the next pass

    def plan_with(renderer: str) -> RunResult:
        new: list[str] = []
        for _ in range(ASSET_ROUNDS + 1):
            with rt.jails.take() as jail:
                provide_assets(step, job, fetched, jail)
                run = jail.run(
                    "plan",
                    scene_spec(job, renderer, settings.max_inflight_encoders),
                    step.keep_going,
                    settings.heartbeat_seconds,
                    wall_seconds=limits.wall_seconds,
                )
                asked = asked_urls(step, jail)
            new = [url for url in asked if url not in fetched]
            if not new or run.stopped is not None:
                return run
            log.info("the scene asked for %d URLs; fetching them and planning again", len(new))
            fetched.extend(new)
        raise assets.AssetRefused(
            new[0], f"the scene still asked for new URLs after {ASSET_ROUNDS} rounds of fetching"
        )

    run = plan_with(renderer)
    if _opengl_scene_error(run, limits, renderer):
        log.warning("scene failed under OpenGL; planning it with cairo instead")
        fallback = plan_with("cairo")
        if fallback.ok:
            run, renderer = fallback, "cairo"
            with step.conn() as conn:
                jobs.set_renderer(conn, claim.job_id, "cairo")
    planned_in = time.perf_counter() - started
    metrics.PLAN_SECONDS.labels(quality=claim.quality).observe(planned_in)
    failed = outcomes.of_run(run, limits)
    if isinstance(failed, outcomes.Stopped):
        return failed
    log_key = store_log(step, run)
    if failed is not None:
        return outcomes.with_log(failed, log_key)
    assert run.report is not None
    durations = outputs.parse_plan(run.report, float(settings.max_scene_seconds))
    total = sum(durations)
    if total > settings.max_scene_seconds:
        return SceneFault(
            f"the scene is {total:.1f} s long; the limit is {settings.max_scene_seconds} s"
        )
    fps = job["fps"]
    frames = [max(1, round(d * fps)) for d in durations]
    chunks = plan_chunks(
        durations,
        fps,
        parallelism=settings.parallelism,
        min_chunk_seconds=settings.min_chunk_seconds,
        skip_weight=skip_weight(planned_in, sum(frames), job["width"], job["height"]),
    )
    planned = [sum(frames[c.first : c.last]) for c in chunks]
    if fetched:  # the chunks get the same assets
        manifest = json.dumps(fetched).encode()
        rt.storage.put_bytes(assets.manifest_key(claim.job_id), manifest, "application/json")
    with step.conn() as conn:
        indices = jobs.record_plan(conn, claim, chunks, planned, log_key)
    if not indices:  # this attempt lost the step: what it wrote must not stay
        rt.storage.delete_prefix(log_key)  # the full key: exactly this object
        return outcomes.Done()
    log.info("planned %d animations into %d chunks", len(durations), len(indices))
    for idx in indices:
        rt.publisher.step(claim.job_id, "chunk", idx, claim.quality)
    return outcomes.Done()
