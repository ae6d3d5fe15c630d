"""Plan: run the scene to learn its animations, drawing those the owner's cache lacks. With
helper passes (``helpers.py``, the default) it draws every animation it reaches first and waits
for the helpers' movies; without, it draws until its budget is spent (``plan_render_seconds``)
and the rest fan out as chunks. A job whose every animation is cached or drawn by its passes is
stitched here, in this worker.

A plan that leaves chunks hands off before its program ends (``workers/jail/handoff.py``): the
plan is recorded and the other chunks go out while the same process, manim imported and the
scene compiled, goes on to draw chunk 0 under that chunk's own claim (``_hand_off``,
``_finish_head``). The scene's subcaptions come with the plan (as cues the program parsed in
the jail) and are stored with it. Not for scenes with sounds: those files leave the jail only
when it ends, and a chunk 0 handed on after a crash could not bring them back."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import anim_cache, assets, jobs, metrics, objects
from farm.captions import Cue
from farm.config import Settings
from farm.jobs import Claim
from farm.logs import log_context
from farm.planner import ChunkPlan, plan_chunks, skip_weight
from workers import lifecycle, media, outcomes
from workers.jail import outputs
from workers.jail.jail import Jail, RunResult, render_encoders
from workers.jail.limits import Limits
from workers.lifecycle import Heartbeat, Step
from workers.outcomes import Outcome, SceneFault
from workers.steps import (
    asked_urls,
    cache_scope,
    cache_variant,
    helpers,
    play_cache_key,
    play_movie_name,
    provide_assets,
    scene_spec,
    store_log,
    store_plays,
)
from workers.steps.render import finish_chunk
from workers.steps.stitch import stitch_here

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
    # Helper passes on the queue's free slots may draw beside this one (helpers.py): every
    # pass claims the animations it draws, and none hands off.
    claims = None
    if _draws_while_planning(settings, renderer) and settings.plan_helpers:
        claims = helpers.Claims(step, budget=settings.plan_render_seconds)

    fetched: list[str] = []  # the URLs the scene asked for, fetched for the next pass
    # The plan's sounds and captions, copied out of its jail (the whole scene's: chunks render
    # video only).
    media_dir = Path(tempfile.mkdtemp(prefix="farm-plan-"))
    handed = HandOff(step)

    def plan_with(renderer: str, hand_off: bool = True) -> RunResult:
        new: list[str] = []
        # A plan is on its job's critical path and often alone on its node: it may use the
        # encoders of the CPUs no other render jail there is running (farm/cpus.py); a pass
        # that claims is told its share again as other passes start (handoff.py).
        spec = scene_spec(job, renderer, render_encoders(settings, starting=True))
        caching = settings.anim_cache and renderer == "cairo"
        held: list[str] = []
        if caching:
            with step.conn() as conn:
                held = anim_cache.held_hashes(
                    conn, cache_scope(settings, job), cache_variant(job, renderer)
                )
        # Every play's hash only when the owner's cache may hold some (hashing costs 1 to 2 s
        # of a 1080p plan); the plays the plan draws are hashed anyway, to be stored.
        spec["hash_plays"] = bool(held)
        if caching and settings.plan_render_seconds > 0:
            spec["render_budget_seconds"] = settings.plan_render_seconds
            spec["cached_hashes"] = held
        spec["handoff"] = caching and settings.plan_handoff and hand_off
        if claims is not None and caching:
            spec = helpers.claim_spec(spec)
            claims.new_pass()
            claims.begin(fresh=not held)

        def on_plan(report: dict[str, Any]) -> tuple[dict[str, Any] | None, float | None]:
            return _hand_off(handed, job, renderer, report, fetched, started)

        for _ in range(ASSET_ROUNDS + 1):
            # The next jail's import (a second of CPU) waits for the end of this step: for
            # chunk 0's check and uploads after a hand-off, or for the stitch of a job the plan
            # finishes, which runs on the node's CPUs (side by side with the thumbnail). No
            # other step can come to this worker process before then anyway.
            with rt.jails.take(warm_next=lambda: False) as jail:
                provide_assets(step, job, fetched, jail)
                run = jail.run(
                    "plan",
                    spec,
                    handed.keep_going,
                    settings.heartbeat_seconds,
                    wall_seconds=limits.wall_seconds,
                    on_plan=on_plan if spec.get("handoff") else None,
                    on_claim=claims if spec.get("claim_plays") else None,
                )
                asked = asked_urls(step, jail)
                new = [url for url in asked if url not in fetched]
                # A handed-off plan is recorded: it is the last pass whatever it asked for
                # (its chunk fails on a URL nobody fetched, as any chunk does).
                final = not new or run.stopped is not None or handed.claim is not None
                # Only the last pass's outputs count: an earlier one drew stand-ins for URLs.
                if final and run.ok and run.report is not None:
                    _copy_out(jail, run.report, media_dir, settings.max_output_mb * 2**20)
            if final:
                return run
            rt.jails.start()  # the next pass's jail imports manim while the URLs are fetched
            log.info("the scene asked for %d URLs; fetching them and planning again", len(new))
            fetched.extend(new)
        raise assets.AssetRefused(
            new[0], f"the scene still asked for new URLs after {ASSET_ROUNDS} rounds of fetching"
        )

    try:
        return _plan(
            step, job, renderer, plan_with, limits, started, fetched, media_dir, handed, claims
        )
    finally:
        if claims is not None:
            with step.conn() as conn:
                jobs.drop_plan_helpers(conn, claim.job_id)
        handed.end()
        rt.jails.start()  # the next jail, now that this step's work is done
        shutil.rmtree(media_dir, ignore_errors=True)


def _copy_out(jail: Jail, report: dict[str, Any], dest: Path, max_bytes: int) -> None:
    """The plan's captions and sounds and what it drew, out of the jail, at the names the
    runner was given (the report is read only for which of those names to look for)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    names = []
    if report.get("captions") is True:
        names.append((CAPTIONS, CAPTIONS_BYTES, "captions"))
    sounds = report.get("sounds")
    for i in range(min(len(sounds), outputs.MAX_SOUNDS) if isinstance(sounds, list) else 0):
        names.append((_sound_name(i), max_bytes, "sound"))
    head = report.get("head")
    if report.get("video") is True and head is None:  # after a hand-off, in head.mp4
        names.append((VIDEO, max_bytes, "video"))
    if isinstance(head, dict) and head.get("video") is True:
        names.append((HEAD_VIDEO, max_bytes, "chunk video"))
    for drew in (report, head if isinstance(head, dict) else {}):
        plays = drew.get("plays")
        for item in plays[: outputs.MAX_ANIMATIONS] if isinstance(plays, list) else []:
            if isinstance(item, list) and item and type(item[0]) is int and item[0] >= 0:
                names.append((play_movie_name(item[0]), max_bytes, "animation movie"))
    for name, limit, what in names:
        path = jail.copy_out(name, limit, what)
        if path is not None:
            shutil.move(path, dest / name)


CAPTIONS = "captions.srt"
CAPTIONS_BYTES = 10 * 2**20
VIDEO = "video.mp4"
HEAD_VIDEO = "head.mp4"  # the chunk a handed-off plan drew (runner.HEAD_NAME)


def _sound_name(index: int) -> str:
    return f"sound-{index:04d}.wav"


@dataclass
class Layout:
    """What a plan report says the job is: each play (frames, cache key, whether cached), what
    the plan drew, and the chunks left to draw."""

    report: dict[str, Any]  # outputs.parse_plan_full's
    frames: list[int]
    plays: list[dict[str, Any]]
    cached: int  # plays the owner's cache holds
    looked_up: int  # plays with a cache key
    drawn_plays: set[int]  # drawn by the plan
    chunks: list[ChunkPlan]  # none: nothing left to draw
    planned: list[int]  # each chunk's most frames


def _layout(
    step: Step,
    job: dict[str, Any],
    renderer: str,
    raw: dict[str, Any],
    planned_in: float,
    has_movie: Callable[[int], bool] = lambda index: True,
) -> Layout | SceneFault:
    """Read a plan report (untrusted: ``OutputError``), look its plays up in the owner's cache
    and cut what is left into chunks. A play the plan says it drew counts as drawn only if
    ``has_movie`` (a movie that did not come out of the jail is drawn again by a chunk)."""
    settings = step.rt.settings
    fps = job["fps"]
    report = outputs.parse_plan_full(raw, float(settings.max_scene_seconds), fps)
    durations: list[float] = report["durations"]
    total = sum(durations)
    if total > settings.max_scene_seconds:
        return SceneFault(
            f"the scene is {total:.1f} s long; the limit is {settings.max_scene_seconds} s"
        )
    frames = [round(d * fps) for d in durations]

    # The animation cache: plays whose movie the owner's cache holds render nowhere.
    keys: list[str | None] = [None] * len(durations)
    if settings.anim_cache and renderer == "cairo":
        keys = [
            play_cache_key(job, renderer, h) if h is not None and n > 0 else None
            for h, n in zip(report["hashes"], frames, strict=True)
        ]
    with step.conn() as conn:
        cached = anim_cache.lookup(conn, cache_scope(settings, job), [k for k in keys if k])
    plays: list[dict[str, Any]] = [
        {"frames": n, "key": k, "cached": k in cached} for n, k in zip(frames, keys, strict=True)
    ]
    drawn = report["drawn"]
    drawn_plays = {i for i, _, _ in drawn["plays"] if has_movie(i)} if drawn else set()
    done = [n == 0 or p["cached"] or i in drawn_plays for i, (n, p) in
            enumerate(zip(frames, plays, strict=True))]  # fmt: skip
    to_render = [0.0 if d else seconds for d, seconds in zip(done, durations, strict=True)]
    chunks = []
    if not all(done):
        chunks = plan_chunks(
            to_render,
            fps,
            parallelism=_free_slots(step),
            min_chunk_seconds=settings.min_chunk_seconds,
            skip_weight=skip_weight(
                max(0.0, planned_in - report["drawing_seconds"]),
                max(1, sum(frames)),
                job["width"],
                job["height"],
            ),
        )
    return Layout(
        report,
        frames,
        plays,
        len(cached),
        sum(1 for k in keys if k),
        drawn_plays,
        chunks,
        [max(1, sum(frames[c.first : c.last])) for c in chunks],
    )


class HandOff:
    """A plan's hand-off: which claim the run works under (the plan's, then chunk 0's, with a
    heartbeat of its own) and the layout it handed off with."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.layout: Layout | None = None  # what it offered (handed off or not)
        self.claim: Claim | None = None
        self.beat: Heartbeat | None = None
        self.started = 0.0  # when chunk 0 began (time.perf_counter)

    def keep_going(self) -> bool:
        return self.beat.keep_going() if self.beat is not None else self.step.keep_going()

    def chunk_step(self) -> Step:
        assert self.claim is not None and self.beat is not None
        return Step(self.step.rt, self.claim, self.beat)

    def start(self, claim: Claim) -> None:
        """This run is chunk 0's from now: its heartbeat, its place among chunks in flight."""
        self.claim, self.started = claim, time.perf_counter()
        self.beat = Heartbeat(self.step.rt, claim).__enter__()
        metrics.CHUNKS_IN_FLIGHT.inc()

    def finish(self, job: dict[str, Any], run: RunResult, media_dir: Path) -> None:
        """Check and record what the run drew as chunk 0, and settle chunk 0's outcome."""
        claim = self.claim
        assert claim is not None
        with log_context(step=claim.kind, chunk=claim.idx, attempt=claim.attempt):
            try:
                outcome = _finish_head(self, job, run, media_dir)
            except Exception as exc:
                log.exception("chunk 0, drawn by its plan's process, raised")
                outcome = outcomes.of_exception(exc)
            lifecycle.settle(self.step.rt, claim, outcome)
            log.info("chunk 0, drawn in the plan's process: %s", type(outcome).__name__.lower())

    def end(self) -> None:
        if self.beat is not None:
            self.beat.__exit__()
            self.beat = None
            metrics.CHUNKS_IN_FLIGHT.dec()


def _hand_off(
    handed: HandOff,
    job: dict[str, Any],
    renderer: str,
    raw: dict[str, Any],
    fetched: list[str],
    started: float,
) -> tuple[dict[str, Any] | None, float | None]:
    """The plan's program offers its plan mid-run: record it (with the scene's captions, which
    it offers as cues), let the other chunks go, and answer with chunk 0's range, which the
    program draws next under chunk 0's claim. No answer (it finishes as a plain plan) when the
    plan leaves no chunk, has sounds or unreadable captions, or asked for URLs the worker has
    still to fetch."""
    step = handed.step
    rt, claim, settings = step.rt, step.claim, step.rt.settings
    offered_cues = raw.pop("cues", None)
    if raw.pop("assets_missed", True) is not False:
        return None, None
    try:
        layout = _layout(step, job, renderer, raw, time.perf_counter() - started)
    except outputs.OutputError:
        return None, None  # the report after the run says the same, and fails the plan there
    if isinstance(layout, SceneFault):
        return None, None
    handed.layout = layout  # declined or not, the plan after the run need not look it up again
    if not layout.chunks or layout.report["sounds"]:
        return None, None
    cues: list[Cue] = []
    if layout.report["captions"]:
        try:
            cues = media.cues_from_report(offered_cues, settings.max_scene_seconds * 1000 * 2)
        except media.MediaError:
            return None, None  # the run's end brings the .srt, parsed in a media jail as ever
    if fetched:  # the chunks get the same assets
        manifest = json.dumps(fetched).encode()
        rt.storage.put_bytes(assets.manifest_key(claim.job_id), manifest, "application/json")
    cues_key = _put_cues(step, cues)
    head = layout.chunks[0]
    for index in layout.drawn_plays:  # joined into chunk 0's video (the bench reads this)
        layout.plays[index]["early"] = True
    with step.conn() as conn:
        owned = jobs.record_plan(
            conn,
            claim,
            layout.chunks,
            layout.planned,
            first_chunk_lease=settings.lease_seconds,
        )
        if owned:  # only the owning attempt speaks for the job (in the same transaction)
            anim_cache.set_job_plays(conn, claim.job_id, layout.plays)
            if cues_key is not None:  # the whole scene's: no chunk draws captions (range_media)
                anim_cache.set_plan_media(conn, claim.job_id, cues_key, [])
    if not owned:
        if cues_key is not None:
            rt.storage.delete_prefix(cues_key)  # the full key: exactly this object
        return None, None
    handed.start(jobs.first_chunk_claim(claim, head))
    _observe(step, layout, time.perf_counter() - started)
    log.info(
        "planned %d animations (%d cached, %d drawn while planning) into %d chunks; drawing"
        " chunk 0 (animations %d to %d) in the plan's process",
        len(layout.frames),
        layout.cached,
        len(layout.drawn_plays),
        len(layout.chunks),
        head.first,
        head.last - 1,
    )
    skip = [
        i for i in range(head.first, head.last)
        if layout.plays[i]["cached"] or i in layout.drawn_plays
    ]  # fmt: skip
    draw = {
        "from": head.first,
        "upto": head.last,
        "skip_plays": skip,
        "max_inflight_encoders": settings.max_inflight_encoders,
    }
    return {"draw": draw}, float(rt.jails.limits.wall_seconds)


def _observe(step: Step, layout: Layout, planned_in: float) -> None:
    metrics.PLAN_SECONDS.labels(quality=step.claim.quality).observe(planned_in)
    metrics.ANIM_CACHE_PLAYS.labels(result="hit").inc(layout.cached)
    metrics.ANIM_CACHE_PLAYS.labels(result="miss").inc(layout.looked_up - layout.cached)


def _plan(
    step: Step,
    job: dict[str, Any],
    renderer: str,
    plan_with: Any,
    limits: Limits,
    started: float,
    fetched: list[str],
    media_dir: Path,
    handed: HandOff,
    claims: helpers.Claims | None,
) -> Outcome:
    rt, claim = step.rt, step.claim
    run = plan_with(renderer)
    if handed.claim is not None:  # the plan was recorded at the hand-off; the rest is chunk 0's
        handed.finish(job, run, media_dir)
        return outcomes.Done()
    if _opengl_scene_error(run, limits, renderer):
        log.warning("scene failed under OpenGL; planning it with cairo instead")
        # No hand-off: its chunks would start before the job says cairo.
        fallback = plan_with("cairo", hand_off=False)
        if fallback.ok:
            run, renderer = fallback, "cairo"
            with step.conn() as conn:
                jobs.set_renderer(conn, claim.job_id, "cairo")
    planned_in = time.perf_counter() - started
    failed, log_key = _ended(step, run, limits)
    if failed is not None:
        return failed
    assert run.report is not None and log_key is not None
    early = None
    if claims is not None and claims.lost:  # its own movies go up while the helpers finish
        early = _store_drawn(step, job, run.report, media_dir)
    helped = _helped(step, claims, run.report, started + limits.wall_seconds)

    def has_movie(index: int) -> bool:
        return (media_dir / play_movie_name(index)).is_file()

    offered = handed.layout
    if offered is not None and _same_plan(offered, run.report, job, step, has_movie):
        layout: Layout | SceneFault = offered
    else:
        layout = _layout(step, job, renderer, run.report, planned_in, has_movie)
    if isinstance(layout, SceneFault):
        return layout
    # Drawn for this job (by a helper, or by the plan and stored before the layout looked its
    # plays up): in the cache now, but neither a hit nor a miss.
    scope = cache_scope(rt.settings, job)
    for index in helped | set(early or {}):
        play = layout.plays[index]
        if play["cached"]:
            play["cached"] = False
            layout.cached -= 1
            layout.looked_up -= 1
        if index in helped:
            play.update(helper=True, object=anim_cache.object_key(scope, play["key"]))
    _observe(step, layout, planned_in)
    report, plays, frames = layout.report, layout.plays, layout.frames
    drawn, drawn_plays, finishing = report["drawn"], layout.drawn_plays, not layout.chunks
    # Whether the plan leaves nothing to render: then the stitch, right here, checks the video
    # the tenant gets (one media jail fewer on a short job's path than checking it twice).
    written = _store_media(step, job, report, media_dir, check_drawn=not finishing)
    if drawn is not None and drawn["plays"]:  # what the plan drew: cached and joined by key
        if early is None:
            early = _store_drawn(step, job, run.report, media_dir)
        for index, object_key in (early or {}).items():
            plays[index]["object"] = object_key
            plays[index]["plan"] = True  # drawn while planning (the bench and logs tell apart)
    # A plan that drew every animation hands the stitch its own movie (manim joined the
    # animations already): one part to check, not one per animation.
    video_key = None
    if (
        finishing
        and all(n == 0 or i in drawn_plays for i, n in enumerate(frames))
        and (media_dir / VIDEO).is_file()
    ):
        video_key = objects.plan_video(claim.job_id, claim.attempt)
        rt.storage.put_file(video_key, str(media_dir / VIDEO), "video/mp4")
        written["keys"].append(video_key)
    chunks = layout.chunks
    if fetched:  # the chunks get the same assets
        manifest = json.dumps(fetched).encode()
        rt.storage.put_bytes(assets.manifest_key(claim.job_id), manifest, "application/json")
    with step.conn() as conn:
        if chunks:
            owned = bool(jobs.record_plan(conn, claim, chunks, layout.planned, log_key))
        else:
            owned = jobs.record_plan_without_chunks(conn, claim, log_key)
        if owned:  # a lost attempt must not point the job at the objects it deletes below
            anim_cache.set_job_plays(conn, claim.job_id, plays)
            media_keys = (written["cues"], written["sounds"], video_key)
            anim_cache.set_plan_media(conn, claim.job_id, *media_keys)
    if not owned:  # this attempt lost the step: what it wrote must not stay
        for key in [log_key, *written["keys"]]:
            rt.storage.delete_prefix(key)  # the full key: exactly this object
        return outcomes.Done()
    log.info(
        "planned %d animations (%d cached, %d drawn while planning, %d by helper passes)"
        " into %d chunks",
        len(frames),
        layout.cached,
        sum(1 for p in plays if p.get("plan")),
        sum(1 for p in plays if p.get("helper")),
        len(chunks),
    )
    if not chunks:  # every animation cached or drawn: the stitch is this job's last step
        stitch_here(rt, claim.job_id)
    # The chunks are published by the scheduler's dispatcher (fair share across owners).
    return outcomes.Done()


def _store_drawn(
    step: Step, job: dict[str, Any], raw: dict[str, Any], media_dir: Path
) -> dict[int, str] | None:
    """Put the movies the plan drew in the owner's cache; {play: object key}, or None when the
    report is unreadable (the layout refuses it)."""
    try:
        report = outputs.parse_plan_full(raw, float(step.rt.settings.max_scene_seconds), job["fps"])
    except outputs.OutputError:
        return None
    drawn = report["drawn"]
    if drawn is None:
        return {}
    movies = {i: media_dir / play_movie_name(i) for i, _, _ in drawn["plays"]}
    movies = {i: path for i, path in movies.items() if path.is_file()}
    return store_plays(step, job, movies, drawn["plays"], [{} for _ in report["durations"]])


def _helped(
    step: Step, claims: helpers.Claims | None, report: dict[str, Any], deadline: float
) -> set[int]:
    """Wait for the helpers holding plays this pass lost, and put the hash of each movie they
    stored into the report (where this pass, which did not draw it, has none): the layout then
    finds them in the owner's cache. Returns those plays."""
    if claims is None:
        return set()
    claims.end_pass()
    with step.conn() as conn:  # those not started never will
        jobs.drop_plan_helpers(conn, step.claim.job_id)
    if not claims.lost:
        return set()
    drew = claims.collect(deadline - time.perf_counter() + time.monotonic())
    hashes = report.get("hashes")
    if not isinstance(hashes, list):
        return set()  # the report is refused by the layout
    helped = set()
    for play, play_hash in drew.items():
        if play < len(hashes) and hashes[play] in (None, play_hash):
            hashes[play] = play_hash
            helped.add(play)
    missing = len(claims.lost) - len(helped)
    log.info(
        "helpers drew %d of this job's animations%s",
        len(helped),
        f"; {missing} left for chunks" if missing else "",
    )
    return helped


def _draws_while_planning(settings: Settings, renderer: str) -> bool:
    return settings.anim_cache and renderer == "cairo" and settings.plan_render_seconds > 0


def _same_plan(
    layout: Layout,
    raw: dict[str, Any],
    job: dict[str, Any],
    step: Step,
    has_movie: Callable[[int], bool],
) -> bool:
    """Whether a plan offered for hand-off (and declined) is the one the run reported, each
    movie it drew out of the jail: then its cache lookups and cut stand."""
    report = outputs.parse_plan_full(raw, float(step.rt.settings.max_scene_seconds), job["fps"])
    return report == layout.report and all(has_movie(i) for i in layout.drawn_plays)


def _ended(step: Step, run: RunResult, limits: Limits) -> tuple[Outcome | None, str | None]:
    """How the run failed (None: it did not) and, unless it was stopped, its log, stored under
    the step's claim (the plan's, or chunk 0's after a hand-off)."""
    failed = outcomes.of_run(run, limits)
    if isinstance(failed, outcomes.Stopped):
        return failed, None
    log_key = store_log(step, run)
    return (None if failed is None else outcomes.with_log(failed, log_key)), log_key


def _finish_head(handed: HandOff, job: dict[str, Any], run: RunResult, media_dir: Path) -> Outcome:
    """After a hand-off the run is chunk 0's: check what it drew against the plan it handed
    off (the plays the plan drew first, joined into the chunk's video, and the range it was
    handed), and record it as chunk 0."""
    step, layout = handed.chunk_step(), handed.layout
    assert layout is not None
    job = {**job, "chunks_total": len(layout.chunks)}  # read before the plan was recorded
    settings = step.rt.settings
    failed, log_key = _ended(step, run, step.rt.jails.limits)
    if failed is not None:
        return failed
    assert run.report is not None and log_key is not None
    head_raw = run.report.pop("head", None)
    report = outputs.parse_plan_full(run.report, float(settings.max_scene_seconds), job["fps"])
    if not isinstance(head_raw, dict):
        return SceneFault("the plan did not draw the chunk it was handed")
    if any(report[k] != layout.report[k] for k in ("durations", "hashes", "drawn")):
        return SceneFault("the plan changed after it was handed off")
    max_frames = layout.planned[0]
    head = outputs.parse_render(head_raw, max_frames)
    by_plan = report["drawn"]["plays"] if report["drawn"] is not None else []
    first, last = step.claim.first_animation or 0, step.claim.last_animation or 0
    for index, frames, play_hash in head["plays"]:
        mine = first <= index < last and not layout.plays[index]["cached"]
        if not mine or index in layout.drawn_plays:
            raise outputs.OutputError(f"the chunk drew animation {index}, not one of its own")
        planned_hash = layout.report["hashes"][index]  # None: the plan did not hash it
        if frames != layout.frames[index] or planned_hash not in (None, play_hash):
            raise outputs.OutputError(f"the chunk's movie of animation {index} is not as planned")
    video = media_dir / HEAD_VIDEO
    if not head["video"] or not video.is_file():
        return SceneFault("the render produced no chunk video")
    plays = sorted(by_plan + head["plays"])
    movies = {i: media_dir / play_movie_name(i) for i, _, _ in plays}
    return finish_chunk(
        step,
        job,
        video,
        None,
        max_frames,
        {i: path for i, path in movies.items() if path.is_file()},
        plays,
        layout.plays,
        log_key,
        [log_key],
        handed.started,
    )


def _free_slots(step: Step) -> int:
    """How many chunks to cut: the render slots free on the job's queue, this plan's own
    included (it frees as the plan ends), at most ``parallelism``. Unknown (Redis away, no
    worker announced yet): ``parallelism``."""
    free = helpers.free_slots(step)
    if free is None:
        return step.rt.settings.parallelism
    return max(1, min(step.rt.settings.parallelism, free + 1))


def _store_media(
    step: Step, job: dict[str, Any], report: dict[str, Any], media_dir: Path, check_drawn: bool
) -> dict[str, Any]:
    """Upload the plan's sounds and its captions (as cues, parsed in a media jail). What the
    plan drew is checked in that same media jail, as a chunk's video is (``check_drawn``; a job
    the plan finishes is checked by its stitch instead)."""
    rt, claim = step.rt, step.claim
    keys: list[str] = []
    sounds: list[tuple[str, float, float | None]] = []
    for i, (time_, gain) in enumerate(report["sounds"]):
        path = media_dir / _sound_name(i)
        if not path.is_file():
            raise media.MediaError("a sound the scene added could not be read")
        key = objects.plan_sound(claim.job_id, claim.attempt, i)
        rt.storage.put_file(key, str(path), "audio/wav")
        keys.append(key)
        sounds.append((key, time_, gain))
    captions: Path | None = media_dir / CAPTIONS
    if not (report["captions"] and captions is not None and captions.is_file()):
        captions = None
    drawn, video = report["drawn"], media_dir / VIDEO
    cues: list[Cue] = []
    if drawn is not None and drawn["video"] and check_drawn:
        if not video.is_file():
            raise media.MediaError("the animations the plan drew could not be read")
        _, cues = media.check_chunk(
            rt.settings,
            video,
            captions,
            width=job["width"],
            height=job["height"],
            fps=job["fps"],
            max_frames=drawn["frames"],
            keep_going=step.keep_going,
        )
    elif captions is not None:
        cues = media.parse_captions(rt.settings, captions, step.keep_going)
    cues_key = _put_cues(step, cues)
    if cues_key is not None:
        keys.append(cues_key)
    return {"keys": keys, "sounds": sounds, "cues": cues_key}


def _put_cues(step: Step, cues: list[Cue]) -> str | None:
    """Store the plan's cue list (the stitch's captions); None when there are none."""
    if not cues:
        return None
    claim = step.claim
    cues_key = objects.plan_cues(claim.job_id, claim.attempt)
    body = json.dumps([[c.start_ms, c.end_ms, c.text] for c in cues]).encode()
    step.rt.storage.put_bytes(cues_key, body, "application/json")
    return cues_key
