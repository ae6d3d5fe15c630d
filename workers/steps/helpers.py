"""Helper passes: a plan with free render slots beside it does not draw alone.

As the plan step starts its pass (an edit's: as it draws), it adds one helper pass per render
slot free on its queue (plan steps 1..n, published by the dispatcher at once). The plan and its
helpers each run the whole ``construct()`` in their own jail and claim each animation as they
reach it (``farm.play_claims``): a pass draws what it claimed and simulates the rest. So no
plan pass comes before the first frames, and the passes balance themselves. Where a helper
would take CPU from its plan (the same host and CPUs) it starts only once the plan has drawn
for its budget; after an edit's cached animations the plan adds helpers only then too
(``Claims``): a short scene, or an edit with little to draw, is done by the plan alone. A
helper leaves static waits (a scene's closing ``self.wait()``) unclaimed, to the plan: drawing
one costs the plan a frame and the encoder's repeats, a helper's movie of it costs the job a
movie to store, wait for and join.

The plan stays the job's only authority. A helper puts the movie of each animation it drew in
the owner's animation cache and says so (the stitch checks them in its media jail with the whole
video, as it checks the plan's own); it never records a plan, fails its job, or runs a second
attempt. The plan, at the end of its pass, waits for the helpers holding claims it lost
(``collect``), and treats what they stored as its job's own; what a helper did not store (it
died, or its report was refused) is cut into chunks as ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from farm import anim_cache, jobs
from farm.play_claims import PlayClaims
from workers import registry
from workers.jail import outputs
from workers.jail.jail import render_encoders
from workers.lifecycle import Step
from workers.outcomes import Done, Outcome
from workers.routing import queue_for
from workers.steps import (
    asked_urls,
    cache_scope,
    cache_variant,
    play_movie_name,
    provide_assets,
    scene_spec,
    store_plays,
)

log = logging.getLogger("farm.worker")

# How often the plan looks for what its helpers stored, and asks the database whether a helper
# it waits for still runs.
POLL_SECONDS = 0.02
ALIVE_EVERY_SECONDS = 1.0

# How often a helper on its plan's CPUs looks whether the plan has drawn for its budget, and a
# helper that has drawn nothing whether the plan's pass has ended (then it stops).
WAIT_SECONDS = 0.05
STOP_CHECK_SECONDS = 0.25

# A helper beside its plan warms its next jail once the plan's pass has ended, or this long
# after its own step at the latest (the plan's worker died: nobody says so).
WARM_LATER_SECONDS = 30.0

# A pass that claims draws every play it wins: no budget (the plan's wall clock still holds).
UNLIMITED_BUDGET = 10.0**9


def free_slots(step: Step) -> int | None:
    """Render slots free on the job's queue besides this plan's (None: unknown, Redis away or
    no worker announced yet). Workers announce their slots (``workers/registry.py``); the
    plan and chunk steps running on the queue's quality hold some."""
    try:
        slots = registry.queue_slots(step.rt.services.redis, queue_for("plan", step.claim.quality))
    except redis.RedisError:
        return None
    if slots == 0:
        return None
    with step.conn() as conn:
        busy = jobs.busy_render_steps(conn, step.claim.quality)  # this plan included
    return max(0, slots - busy)


def spawn(step: Step) -> int:
    """Add a helper pass per free slot (at most ``parallelism`` passes in all); returns how
    many were added."""
    count = min(free_slots(step) or 0, step.rt.settings.parallelism - 1)
    if count <= 0:
        return 0
    with step.conn() as conn:
        added = jobs.add_plan_helpers(conn, step.claim, count)
    if added:
        log.info("%d helper passes draw beside the plan", added)
    return added


class Claims:
    """A pass's side of the claims: answers its program (``draw``, ``skip``, or ``stop``, for a
    helper with nothing left to do), and remembers which plays it lost to which helper (the
    plan waits for those).

    The plan adds its helpers as its pass starts (``begin``), or, when the owner's cache holds
    movies of its variant (an edit), as it draws its first animation, or when the
    animations before that were cached, once it has drawn for ``budget`` seconds: an edit
    with little to draw is done by the plan alone. It says where it runs: a helper on the same
    CPUs waits until the plan has drawn for its budget (``_start``).
    """

    def __init__(self, step: Step, budget: float | None = None) -> None:
        self.step = step
        self.is_plan = budget is not None
        self.claims = PlayClaims(step.rt.services.redis, step.claim.job_id)
        self.lost: dict[int, int] = {}  # play -> the helper pass holding it
        self.won = 0
        self.stopped = False  # a helper the plan's pass ended before it drew anything
        self._budget = budget  # None: adds no helpers (a helper, or a plan without)
        self._drawing_since = 0.0
        self._after_cache = False

    def new_pass(self) -> None:
        self.lost.clear()

    def __call__(self, play: int) -> str:
        passer = self.step.claim.idx
        try:
            holder, plan_ended = self.claims.claim(play, passer)
        except redis.RedisError:
            # Without Redis the plan draws everything and helpers nothing: slower, never wrong.
            return "draw" if passer == 0 else "stop"
        if passer > 0 and plan_ended and not self.won:
            self.stopped = True  # the plan has every play: nothing of this helper's is awaited
            return "stop"
        if holder != passer:
            self.lost[play] = holder
            return "skip"
        self.won += 1
        if self.is_plan:
            self._drawing(play)
        return "draw"

    def begin(self, fresh: bool) -> None:
        """The plan's pass starts. For a scene its owner's cache holds nothing of, it adds
        its helpers now: a helper on other CPUs runs the scene's set-up beside the plan's
        instead of after it, and is there when the first animation is (a helper on the
        plan's CPUs still waits for the plan's budget, ``_start``). An edit's plan adds them
        as it draws, below."""
        if not fresh or self._budget is None:  # a helper, or helpers added already
            return
        try:
            self.claims.plan_starts(_where())
            if spawn(self.step):
                self._budget = None
        except redis.RedisError:
            self._budget = None  # nowhere to claim: no helpers

    def _drawing(self, play: int) -> None:
        """Say where and since when the plan draws (once), and add helpers for the slots free
        now, when due (until some were added: slots may free up as the plan goes on)."""
        now = time.monotonic()
        try:
            if self.won == 1:  # helpers on its CPUs count from here, whenever they are added
                self._drawing_since, self._after_cache = now, play > 0
                self.claims.plan_drawing(_where())
            if self._budget is None:
                return
            if self._after_cache and now - self._drawing_since < self._budget:
                return
            if spawn(self.step):
                self._budget = None
        except redis.RedisError:
            self._budget = None  # nowhere to claim: no helpers

    def no_longer_needed(self) -> bool:
        """A helper that has drawn nothing, whose plan's pass has ended (it stops now)."""
        if not self.won and not self.stopped:
            with contextlib.suppress(redis.RedisError):
                self.stopped = self.claims.helpers().plan_ended
        return self.stopped

    def end_pass(self) -> None:
        """The plan's pass has ended: helpers that have drawn nothing stop."""
        with contextlib.suppress(redis.RedisError):
            self.claims.plan_ended()

    def held_by(self, helper: int) -> list[int]:
        return [play for play, holder in self.lost.items() if holder == helper]

    def collect(self, deadline: float) -> dict[int, str]:
        """Wait until every helper holding a play this pass lost has stored what it drew, or
        ended, or died; returns {play: hash} of the lost plays a helper stored."""
        step = self.step
        waiting = set(self.lost.values())
        checked = time.monotonic()
        drew: dict[int, str] = {}
        while waiting and time.monotonic() < deadline and step.keep_going():
            try:
                said = self.claims.helpers()
            except redis.RedisError:
                break
            drew = said.drew
            waiting -= said.ended
            waiting -= {h for h in waiting if all(p in drew for p in self.held_by(h))}
            if waiting and time.monotonic() - checked >= ALIVE_EVERY_SECONDS:
                checked = time.monotonic()
                with step.conn() as conn:
                    waiting = {
                        h for h in waiting if jobs.plan_helper_running(conn, step.claim.job_id, h)
                    }
            if waiting:
                time.sleep(POLL_SECONDS)
        return {play: drew[play] for play in self.lost if play in drew}


def claim_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A plan spec for a pass that claims: it draws every play it wins, hands nothing off."""
    return {
        **spec,
        "claim_plays": True,
        "render_budget_seconds": UNLIMITED_BUDGET,
        "handoff": False,
    }


def help_plan(step: Step) -> Outcome:
    """A helper pass: draw the plays it claims, store their movies in the owner's cache."""
    rt, claim, settings = step.rt, step.claim, step.rt.settings
    claims = Claims(step)
    beside_plan = False  # on the plan's CPUs (Redis away: taken not to be)
    with contextlib.suppress(redis.RedisError):
        where = _start(step, claims)
        if where is None:
            return _done(step, claims, "the plan's pass ended before this helper started")
        beside_plan = _shares_cpus(where)
    with step.conn() as conn:
        if jobs.plan_recorded(conn, claim.job_id):
            jobs.drop_plan_helpers(conn, claim.job_id)
            return _done(step, claims, "the plan ended before this helper started")
        job = jobs.get_job(conn, claim.job_id)
        renderer = job["renderer"] or settings.renderer
        held = anim_cache.held_hashes(
            conn, cache_scope(settings, job), cache_variant(job, renderer)
        )
    spec = claim_spec(scene_spec(job, renderer, render_encoders(settings, starting=True)))
    spec.update(hash_plays=bool(held), cached_hashes=held, leave_static_waits=True)
    out = Path(tempfile.mkdtemp(prefix="farm-helper-"))
    try:
        # Beside its plan, the helper's next jail (a second of CPU importing manim) waits for
        # the plan's pass to end: until then it would take CPU from the job's last animations.
        with rt.jails.take(warm_next=lambda: not beside_plan) as jail:
            provide_assets(step, job, [], jail)
            run = jail.run(
                "plan",
                spec,
                lambda: step.keep_going() and not claims.no_longer_needed(),
                STOP_CHECK_SECONDS,  # how often keep_going is asked
                wall_seconds=settings.plan_timeout_seconds,
                on_claim=claims,
            )
            if claims.stopped:
                return _done(step, claims, "the plan's pass ended before it drew anything")
            if not run.ok or run.report is None:
                return _done(step, claims, "its pass failed (the plan's says why)")
            if asked_urls(step, jail):
                return _done(step, claims, "the scene asked for URLs the plan fetches first")
            report = outputs.parse_plan_full(
                run.report, float(settings.max_scene_seconds), job["fps"]
            )
            drawn = report["drawn"]
            if drawn is None or not drawn["plays"]:
                return _done(step, claims, "it drew nothing")
            # Copied out by the names the runner was given; the movies are read by nothing on
            # the host: the stitch joins them in its media jail, and checks the whole video
            # there, as it checks a plan's own movies.
            limit = settings.max_output_mb * 2**20
            movies: dict[int, Path] = {}
            for index, _, _ in drawn["plays"]:
                path = jail.copy_out(play_movie_name(index), limit, "animation movie")
                if path is not None:
                    movies[index] = Path(shutil.move(path, out / play_movie_name(index)))
        plays: list[dict[str, Any]] = [{} for _ in report["durations"]]
        stored = store_plays(step, job, movies, drawn["plays"], plays)
        hashes = {index: play_hash for index, _, play_hash in drawn["plays"]}
        for index in stored:
            claims.claims.drew(index, hashes[index])
        return _done(step, claims, f"stored {len(stored)} animation movies")
    except outputs.OutputError as exc:
        return _done(step, claims, f"what it drew was refused: {exc}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if beside_plan:
            rt.jails.start_when(
                lambda: claims.claims.helpers().plan_ended, within=WARM_LATER_SECONDS
            )


def _where() -> str:
    """This process's host and CPUs."""
    return f"{socket.gethostname()}/{','.join(map(str, sorted(os.sched_getaffinity(0))))}"


def _shares_cpus(where: str) -> bool:
    """Whether a pass at ``where`` runs on CPUs this process may use too."""
    host, _, listed = where.partition("/")
    mine = os.sched_getaffinity(0)
    return host == socket.gethostname() and any(int(c) in mine for c in listed.split(",") if c)


def _start(step: Step, claims: Claims) -> str | None:
    """Where the plan draws (``_where``), once this helper may start its pass; None: it does
    not start. On the plan's own CPUs it first waits until the plan has drawn for its budget
    (``plan_render_seconds``): there a helper takes CPU from the plan, which only a scene
    longer than that repays (a short scene, an edit with little to draw, is done by the plan
    alone). Elsewhere it starts at once. Never once the plan's pass has ended."""
    budget = step.rt.settings.plan_render_seconds
    deadline = time.monotonic() + step.rt.settings.plan_timeout_seconds
    checked = time.monotonic()
    while time.monotonic() < deadline and step.keep_going():
        said = claims.claims.helpers()
        if said.plan_ended:
            return None
        if time.monotonic() - checked >= ALIVE_EVERY_SECONDS:  # its worker may have died
            checked = time.monotonic()
            with step.conn() as conn:
                if jobs.plan_recorded(conn, step.claim.job_id):
                    return None
        where = said.plan_where
        if where and (
            not _shares_cpus(where)
            or (said.plan_drawing is not None and claims.claims.now() >= said.plan_drawing + budget)
        ):
            return where
        time.sleep(WAIT_SECONDS)
    return None


def _done(step: Step, claims: Claims, why: str) -> Outcome:
    """A helper ends the same way whatever happened: it says so, and its step is done."""
    log.info("helper pass %d: %s", step.claim.idx, why)
    with contextlib.suppress(redis.RedisError):  # the plan asks the database instead
        claims.claims.ended(step.claim.idx)
    with step.conn() as conn:
        jobs.finish_plan_helper(conn, step.claim)  # or another attempt owns it: nothing to do
    return Done()
