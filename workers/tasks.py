"""Celery tasks: plan a job, render one chunk, stitch, deliver a webhook.

Each task takes ids, claims its step in PostgreSQL (a compare-and-set on the attempt number),
does its work, and records the result only if its attempt still owns the step. Duplicate or
late messages find nothing to claim and return. Scene errors end the job; infrastructure
errors give the step back (the reaper and ``release_step`` cap the attempts).
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from celery import Task

from farm import assets, jobs, metrics
from farm.captions import merge_srt_to_webvtt
from farm.jobs import Claim
from farm.logs import log_context
from farm.planner import plan_chunks, skip_weight
from workers import stitch
from workers.celery_app import app
from workers.routing import TASKS, queue_for
from workers.runtime import Runtime, get_runtime
from workers.sandbox import Limits, OutputError, RunResult, checked_output, copy_output

log = logging.getLogger("farm.worker")


class FarmTask(Task):  # type: ignore[misc]
    """Base task: the process runtime, and the claim/heartbeat/release cycle of a step."""

    acks_late = True

    @property
    def rt(self) -> Runtime:
        return get_runtime()

    @contextmanager
    def conn(self) -> Iterator[Any]:
        with self.rt.pool.connection() as conn:
            yield conn

    def claim(self, job_id: str, kind: str, idx: int) -> Claim | None:
        with self.conn() as conn:
            return jobs.claim_step(conn, job_id, kind, idx, self.rt.settings.lease_seconds)

    def keep_going(self, claim: Claim) -> Callable[[], bool]:
        def beat() -> bool:
            with self.conn() as conn:
                return jobs.heartbeat(conn, claim, self.rt.settings.lease_seconds)

        return beat

    def fail(self, claim: Claim, error: str, kind: str) -> None:
        log.warning("step %s %s failed (%s): %s", claim.kind, claim.idx, kind, error)
        with self.conn() as conn:
            ended = jobs.fail_step(conn, claim, error, kind)
        if ended:
            self.job_ended(claim.job_id, claim.quality)

    def release(self, claim: Claim, error: str) -> None:
        """Give the step back after an infrastructure failure; publish it again or fail the job."""
        log.warning("step %s %s attempt %s failed: %s", claim.kind, claim.idx, claim.attempt, error)
        metrics.TASK_RETRIES.labels(task=claim.kind).inc()
        with self.conn() as conn:
            outcome = jobs.release_step(conn, claim, error, self.rt.settings.max_attempts)
        if outcome == "requeued":
            self.rt.publisher.step(claim.job_id, claim.kind, claim.idx, claim.quality)
        elif outcome == "failed":
            self.job_ended(claim.job_id, claim.quality)

    def job_ended(self, job_id: str, quality: str) -> None:
        """Metrics and the webhook of a job's one terminal transition."""
        with self.conn() as conn:
            job = jobs.get_job(conn, job_id)
        if job["status"] == "completed":
            metrics.JOBS_COMPLETED.labels(quality=quality).inc()
            metrics.CREDITS_SETTLED.labels(quality=quality).inc(float(job["credits_cost"] or 0))
        else:
            metrics.JOBS_FAILED.labels(quality=quality, kind=job["error_kind"] or "unknown").inc()
        if job["completed_at"] is not None:
            age = (job["completed_at"] - job["created_at"]).total_seconds()
            metrics.JOB_DURATION.labels(quality=quality).observe(age)
        self.rt.publisher.webhook(job_id, 1)

    def store_log(self, claim: Claim, run: RunResult) -> str:
        key = f"jobs/{claim.job_id}/logs/{claim.kind}-{claim.idx}.log"
        self.rt.storage.put_bytes(key, run.log.encode(), "text/plain; charset=utf-8")
        return key


def _scene_spec(job: dict[str, Any], renderer: str, inflight_encoders: int) -> dict[str, Any]:
    return {
        "max_inflight_encoders": inflight_encoders,
        "code": job["code"],
        "class_name": job["class_name"],
        "width": job["width"],
        "height": job["height"],
        "fps": job["fps"],
        "portrait": job["aspect_ratio"] == "9:16",
        "renderer": renderer,
    }


# Plan passes that may fetch the URLs the previous pass asked for: a scene whose URLs depend on
# what earlier ones returned needs more than one.
ASSET_ROUNDS = 3


def _provide_assets(
    task: FarmTask,
    job: dict[str, Any],
    urls: list[str],
    directory: Path,
    keep_going: Callable[[], bool],
    any_age: bool = False,
) -> None:
    """Put the job's URLs into a jail's assets directory (owner's cache, else fetched)."""
    assets.provide(
        urls,
        owner=str(job.get("user_id") or job["key_id"]),
        storage=task.rt.storage,
        policy=assets.Policy.from_settings(task.rt.settings),
        directory=directory,
        max_age=None if any_age else -1,
        keep_going=keep_going,
    )


def _planned_urls(task: FarmTask, job_id: str) -> list[str]:
    try:
        raw = task.rt.storage.get_bytes(assets.manifest_key(job_id))
    except FileNotFoundError:
        return []
    return [str(url) for url in json.loads(raw)]


def _failure(run: RunResult, limits: Limits) -> tuple[str, str] | None:
    """(error, kind) for a run that ended the job, or None for one to retry (or that was lost).

    Kinds: scene_error and timeout are the scene's doing and never retried.
    """
    if run.stopped == "timeout":
        return f"render timed out after {limits.wall_seconds:g} s", "timeout"
    if run.stopped == "disk":
        return f"the scene wrote more than {limits.disk_bytes // 2**20} MB", "scene_error"
    if run.stopped == "files":
        return f"the scene created more than {limits.files} files", "scene_error"
    result = run.result
    if result is not None and not result.get("ok") and result.get("scene_error"):
        return str(result.get("error") or "the scene failed"), "scene_error"
    if run.signal == signal.SIGKILL:
        return None  # killed from outside (OOM killer, an operator): worth one more attempt
    if run.signal is not None:
        try:
            name = signal.Signals(run.signal).name
        except ValueError:
            name = f"signal {run.signal}"
        return f"the render process crashed ({name})", "scene_error"
    if result is None and run.log.startswith("bwrap: "):
        return None  # the jail itself failed to start: the platform's problem, not the scene's
    if result is None:
        tail = run.log.strip().splitlines()[-3:]
        detail = ("; last output: " + " | ".join(tail)) if tail else ""
        return (
            f"the scene exited before rendering finished (exit code {run.returncode})" + detail,
            "scene_error",
        )
    if run.returncode == 1 and result.get("error"):
        error = str(result["error"])
        if error.startswith(("MemoryError", "OSError: [Errno 28]", "BlockingIOError")):
            return error, "scene_error"
        return None
    return None


def _opengl_scene_error(run: RunResult, limits: Limits, renderer: str) -> bool:
    """An OpenGL run that failed on the scene: cairo, which supports more of manim, may not."""
    failure = None if run.ok or run.stopped else _failure(run, limits)
    return renderer == "opengl" and failure is not None and failure[1] == "scene_error"


def _settle(task: FarmTask, claim: Claim, run: RunResult, limits: Limits) -> bool:
    """Handle a run that did not succeed; True when the caller should stop."""
    if run.ok:
        return False
    if run.stopped == "canceled":
        log.info("step stopped: job canceled or lease lost")
        return True
    failure = _failure(run, limits)
    with task.conn() as conn:
        jobs.set_log_key(conn, claim.job_id, task.store_log(claim, run))
    if failure is None:
        error = (run.result or {}).get("error") or f"render process exited {run.returncode}"
        task.release(claim, str(error))
    else:
        task.fail(claim, *failure)
    return True


@app.task(base=FarmTask, bind=True, name=TASKS["plan"])
def plan_job(self: FarmTask, job_id: str) -> None:
    """Run the scene without drawing to learn its animations, then fan out the chunks."""
    claim = self.claim(job_id, "plan", 0)
    if claim is None:
        return
    settings = self.rt.settings
    with log_context(job_id=job_id, step="plan", attempt=claim.attempt):
        with self.conn() as conn:
            job = jobs.get_job(conn, job_id)
            renderer = job["renderer"] or settings.renderer
            jobs.set_renderer(conn, job_id, renderer)
        limits = Limits.from_settings(settings, wall_seconds=settings.plan_timeout_seconds)
        started = time.perf_counter()
        policy = assets.Policy.from_settings(settings)
        fetched: list[str] = []  # the URLs the scene asked for, fetched for the next pass

        def plan_with(renderer: str) -> RunResult:
            for _ in range(ASSET_ROUNDS + 1):
                with self.rt.jails.take() as jail:
                    _provide_assets(self, job, fetched, jail.assets, self.keep_going(claim))
                    run = jail.run(
                        "plan",
                        _scene_spec(job, renderer, settings.max_inflight_encoders),
                        limits,
                        self.keep_going(claim),
                        settings.heartbeat_seconds,
                    )
                    asked = assets.read_misses(jail.scratch / assets.MISSES_FILE, policy)
                new = [url for url in asked if url not in fetched]
                if not new or run.stopped is not None:
                    return run
                log.info("the scene asked for %d URLs; fetching them and planning again", len(new))
                fetched.extend(new)
            raise assets.AssetRefused(
                new[0],
                f"the scene still asked for new URLs after {ASSET_ROUNDS} rounds of fetching",
            )

        try:
            run = plan_with(renderer)
            if _opengl_scene_error(run, limits, renderer):
                log.warning(
                    "scene failed under OpenGL (%s); planning it with cairo instead",
                    str((run.result or {}).get("error") or run.log[-300:])
                    .strip()
                    .splitlines()[-1:],
                )
                fallback = plan_with("cairo")
                if fallback.ok:
                    run, renderer = fallback, "cairo"
                    with self.conn() as conn:
                        jobs.set_renderer(conn, job_id, "cairo")
        except assets.AssetError as exc:
            self.fail(claim, str(exc), "scene_error")
            return
        except assets.Interrupted:
            log.info("step stopped while fetching assets: job canceled or lease lost")
            return
        planned_in = time.perf_counter() - started
        metrics.PLAN_SECONDS.labels(quality=claim.quality).observe(planned_in)
        if _settle(self, claim, run, limits):
            return
        durations = [float(d) for d in (run.result or {}).get("durations", [])]
        if sum(durations) > settings.max_scene_seconds:
            self.fail(
                claim,
                f"the scene is {sum(durations):.1f} s long; the limit is "
                f"{settings.max_scene_seconds} s",
                "scene_error",
            )
            return
        total_frames = sum(max(1, round(d * job["fps"])) for d in durations)
        chunks = plan_chunks(
            durations,
            job["fps"],
            parallelism=settings.parallelism,
            min_chunk_seconds=settings.min_chunk_seconds,
            skip_weight=skip_weight(planned_in, total_frames, job["width"], job["height"]),
        )
        if fetched:  # the chunks get the same assets
            self.rt.storage.put_bytes(
                assets.manifest_key(job_id), json.dumps(fetched).encode(), "application/json"
            )
        with self.conn() as conn:
            indices = jobs.record_plan(conn, claim, chunks)
        log.info("planned %d animations into %d chunks", len(durations), len(indices))
        for idx in indices:
            self.rt.publisher.step(job_id, "chunk", idx, claim.quality)


@app.task(base=FarmTask, bind=True, name=TASKS["chunk"])
def render_chunk(self: FarmTask, job_id: str, idx: int) -> None:
    """Render animations [first, last) of the job in a fresh sandbox and upload the movie."""
    claim = self.claim(job_id, "chunk", idx)
    if claim is None:
        return
    settings = self.rt.settings
    queue = queue_for("chunk", claim.quality)
    with log_context(job_id=job_id, chunk=idx, attempt=claim.attempt):
        with self.conn() as conn:
            job = jobs.get_job(conn, job_id)
        spec = _scene_spec(
            job, job["renderer"] or settings.renderer, settings.max_inflight_encoders
        )
        if job["chunks_total"] and job["chunks_total"] > 1:
            spec.update(from_animation=claim.first_animation, upto_animation=claim.last_animation)
        limits = Limits.from_settings(settings)
        urls = _planned_urls(self, job_id)
        metrics.CHUNKS_IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            with self.rt.jails.take() as jail:
                # Any age: every chunk must see the bytes the plan saw.
                _provide_assets(self, job, urls, jail.assets, self.keep_going(claim), True)
                run = jail.run(
                    "render", spec, limits, self.keep_going(claim), settings.heartbeat_seconds
                )
                policy = assets.Policy.from_settings(settings)
                asked = assets.read_misses(jail.scratch / assets.MISSES_FILE, policy)
                if asked:
                    raise assets.AssetRefused(
                        asked[0], "the scene asked for it while rendering but not while planning"
                    )
                if _opengl_scene_error(run, limits, spec["renderer"]):
                    with self.conn() as conn:
                        again = jobs.fall_back_to_cairo(conn, claim)
                    log.warning("chunk failed under OpenGL; the job renders again with cairo")
                    for chunk in again:
                        self.rt.publisher.step(job_id, "chunk", chunk, claim.quality)
                    return
                if _settle(self, claim, run, limits):
                    metrics.CHUNKS_FAILED.labels(queue=queue, kind=run.stopped or "error").inc()
                    return
                keys = _upload_chunk_files(self.rt, claim, jail.scratch, run, jail.dir)
        except OutputError as exc:
            metrics.CHUNKS_FAILED.labels(queue=queue, kind="bad_output").inc()
            self.fail(claim, str(exc), "scene_error")
            return
        except assets.AssetError as exc:
            metrics.CHUNKS_FAILED.labels(queue=queue, kind="asset").inc()
            self.fail(claim, str(exc), "scene_error")
            return
        except assets.Interrupted:
            log.info("step stopped while fetching assets: job canceled or lease lost")
            return
        finally:
            metrics.CHUNKS_IN_FLIGHT.dec()
        metrics.CHUNK_RENDER_SECONDS.labels(quality=claim.quality).observe(
            time.perf_counter() - started
        )
        frames = int((run.result or {}).get("frames") or 0)
        with self.conn() as conn:
            ready = jobs.record_chunk(conn, claim, keys[0], keys[1], frames)
        if ready is None:
            return
        metrics.CHUNKS_RENDERED.labels(queue=queue).inc()
        metrics.FRAMES_RENDERED.labels(quality=claim.quality).inc(frames)
        if ready:
            self.rt.publisher.step(job_id, "stitch", 0, claim.quality)


def _upload_chunk_files(
    rt: Runtime, claim: Claim, scratch: Path, run: RunResult, tmp: Path
) -> tuple[str, str | None]:
    """Check and upload a chunk's outputs under keys the farm builds, never the scene's names."""
    max_bytes = rt.settings.max_output_mb * 2**20
    result = run.result or {}
    if not result.get("video"):
        raise OutputError("the scene rendered no frames (no play() or wait() in range)")
    video = checked_output(scratch, str(result["video"]), max_bytes)
    local = tmp / f"chunk-{claim.idx}.mp4"
    copy_output(video, local, max_bytes)
    base = f"jobs/{claim.job_id}/chunks/{claim.idx:04d}-a{claim.attempt}"
    rt.storage.put_file(f"{base}.mp4", str(local), "video/mp4")
    captions_key = None
    if result.get("srt"):
        srt = checked_output(scratch, str(result["srt"]), 10 * 2**20)
        local_srt = tmp / f"chunk-{claim.idx}.srt"
        copy_output(srt, local_srt, 10 * 2**20)
        captions_key = f"{base}.srt"
        rt.storage.put_file(captions_key, str(local_srt), "application/x-subrip")
    rt.storage.put_bytes(
        f"jobs/{claim.job_id}/logs/chunk-{claim.idx}.log",
        run.log.encode(),
        "text/plain; charset=utf-8",
    )
    return f"{base}.mp4", captions_key


@app.task(base=FarmTask, bind=True, name=TASKS["stitch"])
def stitch_job(self: FarmTask, job_id: str) -> None:
    """Concatenate the chunks (stream copy), add thumbnail and captions, complete the job."""
    claim = self.claim(job_id, "stitch", 0)
    if claim is None:
        return
    rt = self.rt
    with log_context(job_id=job_id, step="stitch", attempt=claim.attempt):
        started = time.perf_counter()
        try:
            with self.conn() as conn:
                outputs = jobs.chunk_outputs(conn, job_id)
                job = jobs.get_job(conn, job_id)
            with tempfile.TemporaryDirectory(prefix="farm-stitch-") as tmp_name:
                tmp = Path(tmp_name)
                parts, srts, logs = [], [], []
                for out in outputs:
                    part = tmp / f"{out['idx']:04d}.mp4"
                    rt.storage.get_file(out["output_key"], str(part))
                    parts.append(part)
                    if out["captions_key"]:
                        srts.append(rt.storage.get_bytes(out["captions_key"]).decode())
                for key in [f"jobs/{job_id}/logs/plan-0.log"] + [
                    f"jobs/{job_id}/logs/chunk-{o['idx']}.log" for o in outputs
                ]:
                    with suppress(FileNotFoundError):
                        logs.append(rt.storage.get_bytes(key).decode("utf-8", "replace"))
                video, thumb = tmp / "video.mp4", tmp / "thumb.jpg"
                stitch.concat_videos(parts, video)
                stitch.thumbnail(video, thumb)
                prefix = f"jobs/{job_id}"
                rt.storage.put_file(f"{prefix}/video.mp4", str(video), "video/mp4")
                rt.storage.put_file(f"{prefix}/thumb.jpg", str(thumb), "image/jpeg")
                captions_key = None
                vtt = merge_srt_to_webvtt(srts)
                if vtt is not None:
                    captions_key = f"{prefix}/captions.vtt"
                    rt.storage.put_bytes(captions_key, vtt.encode(), "text/vtt; charset=utf-8")
                log_key = f"{prefix}/render.log"
                rt.storage.put_bytes(log_key, "".join(logs).encode(), "text/plain; charset=utf-8")
        except Exception as exc:  # storage or ffmpeg trouble is the platform's: try again
            log.exception("stitch failed")
            self.release(claim, f"stitch failed: {exc.__class__.__name__}: {exc}")
            return
        with self.conn() as conn:
            jobs.set_log_key(conn, job_id, log_key)
            ended = jobs.record_result(
                conn,
                claim,
                video_key=f"{prefix}/video.mp4",
                thumbnail_key=f"{prefix}/thumb.jpg",
                captions_key=captions_key,
                renderer=job["renderer"],
            )
        metrics.STITCH_SECONDS.labels(quality=claim.quality).observe(time.perf_counter() - started)
        if ended:
            rt.storage.delete_prefix(f"{prefix}/chunks/")
            self.job_ended(job_id, claim.quality)


@app.task(base=FarmTask, bind=True, name=TASKS["webhook"])
def deliver_webhook(self: FarmTask, job_id: str, attempt: int) -> None:
    """Deliver a job's terminal event (see farm.webhooks); a no-op when no URL applies."""
    from workers.webhook_delivery import deliver

    deliver(self.rt, job_id, attempt)
