"""Stitch: join the chunks in a media jail, add thumbnail, captions and log, complete the job."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from farm import anim_cache, jobs, metrics, objects
from farm.captions import Cue, to_webvtt
from workers import lifecycle, media, outcomes
from workers.lifecycle import Step, job_ended
from workers.outcomes import Outcome, SceneFault
from workers.runtime import Runtime
from workers.steps import cache_scope

log = logging.getLogger("farm.worker")


def _load_cues(raw: bytes, max_ms: int) -> list[Cue]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise media.MediaError("the chunk captions could not be read") from None
    return media.cues_from_report(value, max_ms)


def stitch(step: Step) -> Outcome:
    try:
        return _stitch(step)
    finally:
        # The next stitch's media jail warms once this job is recorded (or has failed): not
        # during the join, the uploads or the record, which the job's end waits for.
        step.rt.media_jails.start()


def _stitch(step: Step) -> Outcome:
    rt, claim = step.rt, step.claim
    settings = rt.settings
    started = time.perf_counter()
    with step.conn() as conn:
        chunks = jobs.chunk_outputs(conn, claim.job_id)
        job = jobs.get_job(conn, claim.job_id)
        log_keys = jobs.step_logs(conn, claim.job_id)
    max_ms = settings.max_scene_seconds * 1000 * 2
    written: list[str] = []
    with step.conn() as conn:
        plays = anim_cache.job_plays(conn, claim.job_id)
        plan_media = anim_cache.plan_media(conn, claim.job_id)
    with tempfile.TemporaryDirectory(prefix="farm-stitch-") as tmp_name:
        tmp = Path(tmp_name)
        parts, cues = [], []
        plan_video = (plan_media or {}).get("video")
        joined: list[tuple[str, int | None]]
        if plan_video:  # it drew every play as planned (its report was checked play by play)
            joined = [(plan_video, sum(p["frames"] for p in plays) if plays else None)]
        else:
            joined = _parts(cache_scope(settings, job), plays, chunks)
        for i, (key, _) in enumerate(joined):
            part = tmp / f"{i:05d}.mp4"
            rt.storage.get_file(key, str(part))
            parts.append(part)
        # Each part's length from its frames (a chunk's as its check counted them, an
        # animation's as its plan did): the media jail need not probe the parts one by one.
        known = [n for _, n in joined if n is not None]
        durations = [n / job["fps"] for n in known] if len(known) == len(joined) else None
        if plan_media is not None:  # the plan's captions and sounds: the whole scene's
            if plan_media.get("cues"):
                cues += _load_cues(rt.storage.get_bytes(plan_media["cues"]), max_ms)
        else:
            for chunk in chunks:
                if chunk["captions_key"]:
                    cues += _load_cues(rt.storage.get_bytes(chunk["captions_key"]), max_ms)
        sounds = []
        for i, (key, at, gain) in enumerate((plan_media or {}).get("sounds") or []):
            path = tmp / f"sound-{i:04d}.wav"
            rt.storage.get_file(key, str(path))
            sounds.append((path, float(at), None if gain is None else float(gain)))
        logs = []
        for key in log_keys:
            with suppress(FileNotFoundError):
                logs.append(rt.storage.get_bytes(key).decode("utf-8", "replace"))
        fetched_at = time.perf_counter()
        video, thumb, info = media.stitch(
            settings,
            parts,
            tmp / "out",
            step.keep_going,
            sounds=sounds,
            durations=durations,
            fps=job["fps"],
            jails=rt.media_jails,
        )
        checked_at = time.perf_counter()
        if info.frames > settings.max_scene_seconds * job["fps"]:
            return SceneFault(
                f"the video is {info.frames / job['fps']:.1f} s long; the limit is "
                f"{settings.max_scene_seconds} s"
            )
        # What the tenant gets is the job's size and fps and no longer than planned, whoever
        # drew it (a chunk's check proved its part; a job its plan finished is proved here).
        if (info.width, info.height) != (job["width"], job["height"]) or info.fps != job["fps"]:
            return SceneFault(
                f"the video is {info.width}x{info.height} at {float(info.fps):g} fps; "
                f"the job is {job['width']}x{job['height']} at {job['fps']} fps"
            )
        if plays and info.frames > sum(p["frames"] for p in plays):
            return SceneFault(
                f"the scene rendered {info.frames} frames where its plan had "
                f"{sum(p['frames'] for p in plays)} (it is longer when drawn than when planned)"
            )
        if not step.keep_going():
            return outcomes.Stopped("job canceled or lease lost")
        video_key = objects.result_video(claim.job_id, claim.attempt)
        thumb_key = objects.result_thumbnail(claim.job_id, claim.attempt)
        rt.storage.put_file(video_key, str(video), "video/mp4")
        written.append(video_key)
        rt.storage.put_file(thumb_key, str(thumb), "image/jpeg")
        written.append(thumb_key)
        # Every job gets its own captions.vtt, cue-less when the scene has no subcaptions.
        captions_key = objects.result_captions(claim.job_id, claim.attempt)
        rt.storage.put_bytes(captions_key, to_webvtt(cues).encode(), "text/vtt; charset=utf-8")
        written.append(captions_key)
        log_key = objects.result_log(claim.job_id, claim.attempt)
        rt.storage.put_bytes(log_key, "".join(logs).encode(), "text/plain; charset=utf-8")
        written.append(log_key)
    with step.conn() as conn:
        ended = jobs.record_result(
            conn,
            claim,
            video_key=video_key,
            thumbnail_key=thumb_key,
            captions_key=captions_key,
            renderer=job["renderer"],
        )
        if ended:
            jobs.set_log_key(conn, claim.job_id, log_key)
    ended_at = time.perf_counter()
    metrics.STITCH_SECONDS.labels(quality=claim.quality).observe(ended_at - started)
    log.info(
        "stitched %d parts in %.2f s (fetched in %.2f s, joined and checked in %.2f s, stored "
        "in %.2f s)",
        len(parts),
        ended_at - started,
        fetched_at - started,
        checked_at - fetched_at,
        ended_at - checked_at,
    )
    if not ended:
        # Another attempt owns the stitch, or the job ended meanwhile: leave no trace.
        for key in written:
            rt.storage.delete_prefix(key)  # the full key: exactly this object
        return outcomes.Done()
    rt.storage.delete_prefix(objects.chunks_prefix(claim.job_id))
    job_ended(rt, claim.job_id)
    _evict(step)
    return outcomes.Done()


def stitch_here(rt: Runtime, job_id: str) -> None:
    """Stitch the job in this worker, which just finished its last render: no queue hop."""
    lifecycle.run_step(rt, "stitch", job_id, 0, stitch)


def _parts(
    scope: str, plays: list[dict[str, Any]] | None, chunks: list[dict[str, Any]]
) -> list[tuple[str, int | None]]:
    """The objects to join, in order, each with its frames: each chunk's video where the
    animations it drew follow one another in the job, else their movies one by one; each
    cached animation's movie under the plan's key; each movie the plan or a helper pass drew
    (helpers.py). Fewer, longer parts join faster (every part is downloaded, and checked in
    the media jail).

    Without the plays' record (a job planned before it was kept), the chunk videos in order.
    """
    videos = [(c["output_key"], c["frames"]) for c in chunks]
    if not plays:
        return videos

    def drawn_by_chunk(play: dict[str, Any]) -> bool:
        drawn_elsewhere = play["cached"] or play.get("plan") or play.get("helper")
        return play["frames"] > 0 and not drawn_elsewhere

    def chunk_of(index: int) -> dict[str, Any] | None:
        for chunk in chunks:
            first, last = chunk["first_animation"] or 0, chunk["last_animation"]
            if first <= index and (last is None or index < last):
                return chunk
        return None

    # The animations with frames, in order, each with the chunk that drew it (None: its movie
    # came from the cache or the plan). A chunk's video holds exactly the animations it drew,
    # so it stands in for them only where no other movie comes between them.
    sequence = [
        (i, chunk_of(i) if drawn_by_chunk(p) else None)
        for i, p in enumerate(plays)
        if p["frames"] > 0
    ]
    runs: dict[int, int] = {}  # chunk idx -> how many separate runs of its animations
    previous = None
    for _, chunk in sequence:
        if chunk is not None and chunk is not previous:
            runs[chunk["idx"]] = runs.get(chunk["idx"], 0) + 1
        previous = chunk
    parts: list[tuple[str, int | None]] = []
    previous = None
    for index, chunk in sequence:
        play = plays[index]
        if play["cached"]:
            parts.append((anim_cache.object_key(scope, play["key"]), play["frames"]))
        elif chunk is not None and runs[chunk["idx"]] == 1:
            if chunk is not previous:
                parts.append((chunk["output_key"], chunk["frames"]))
        elif play.get("object"):
            parts.append((play["object"], play["frames"]))
        else:
            raise RuntimeError("an animation drawn for this job left no movie to join")
        previous = chunk
    return parts


def _evict(step: Step) -> None:
    """Keep the animation cache within its age and size (cheap SQL; objects deleted after)."""
    settings = step.rt.settings
    with step.conn() as conn:
        gone = anim_cache.evict(
            conn,
            max_age_seconds=settings.anim_cache_max_age_seconds,
            max_bytes=settings.anim_cache_max_mb * 2**20,
        )
    for key in gone:
        step.rt.storage.delete_prefix(key)  # the full key: exactly this object
    if gone:
        metrics.ANIM_CACHE_EVICTED.inc(len(gone))
