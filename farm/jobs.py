"""The job store: jobs, their steps (plan, chunks, stitch), and every state transition.

PostgreSQL is the source of truth. Celery messages only carry ``(job_id, kind, idx)``; a step is
claimed with a compare-and-set that bumps its attempt, and results are written only while that
attempt still owns the step, so a duplicated or zombie task can never overwrite a newer one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from psycopg.types.json import Jsonb

from farm import credits
from farm.captions import EMPTY_CAPTIONS_KEY
from farm.errors import Conflict, NotFound
from farm.keys import Conn
from farm.planner import ChunkPlan
from farm.presets import PRESETS, geometry_for

TERMINAL = ("completed", "failed")
ERROR_KINDS = ("scene_error", "timeout", "platform_error", "canceled", "insufficient_credits")
# What the scene caused is charged for the time used (and never retried); platform errors and
# cancels are not charged.
CHARGED_KINDS = ("scene_error", "timeout")


@dataclass(frozen=True)
class JobRequest:
    code: str
    class_name: str
    quality: str = "medium"
    aspect_ratio: str = "16:9"
    fps: int | None = None
    metadata: Any = None
    # None: use the key's default webhook; "" : the client sent null and opted out.
    webhook_url: str | None = None
    seed: int = 0  # the scene's random seed (manim's config.seed)

    def cache_key(self, manim_version: str) -> str:
        """Same code and settings under the same manim: the same video."""
        geometry = geometry_for(self.quality, self.aspect_ratio, self.fps)
        parts: list[Any] = [
            self.code,
            self.class_name,
            self.quality,
            self.aspect_ratio,
            geometry.fps,
            manim_version,
        ]
        if self.seed:  # seed 0 keeps the keys stored before seeds existed
            parts.append(self.seed)
        material = json.dumps(parts)
        return hashlib.sha256(material.encode()).hexdigest()

    def body_hash(self) -> str:
        material = json.dumps(
            [
                self.code,
                self.class_name,
                self.quality,
                self.aspect_ratio,
                self.fps,
                self.metadata,
                self.webhook_url,
                self.seed,
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool  # False for an idempotent replay
    # True when the dispatcher will publish its plan; False when the job is held (its user is
    # at their limit), completed from the cache, or was replayed. Nobody publishes it here.
    publish_plan: bool


@dataclass(frozen=True)
class Claim:
    """One attempt's ownership of a step."""

    job_id: str
    kind: str
    idx: int
    attempt: int
    quality: str
    first_animation: int | None
    last_animation: int | None


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def submit_job(
    conn: Conn,
    key_id: str,
    request: JobRequest,
    *,
    manim_version: str,
    idempotency_key: str | None = None,
    max_active_jobs: int | None = None,
    cache_scope: str = "owner",
) -> Submitted:
    """Create a job for the key's user, reserve its credits, and complete it at once from the
    cache when possible.

    ``cache_scope`` "owner" serves only results of the same owner's jobs; "global" any
    tenant's (an operator's choice), though never another owner's logs.
    A user with ``max_active_jobs`` (their own limit, else this one) unfinished jobs already
    rendering still gets the job: it is held, queued, until ``reap`` releases it when one of
    theirs ends. Runs in the caller's transaction and publishes nothing: the dispatcher
    (farm.dispatch) sends the plan step once this commits (the step row is the outbox).
    """
    owner = conn.execute(
        "SELECT u.id, u.max_active_jobs FROM api_keys k JOIN users u ON u.id = k.user_id"
        " WHERE k.id = %s",
        (key_id,),
    ).fetchone()
    if owner is None:
        raise NotFound(f"no API key {key_id!r}")
    user_id = owner["id"]
    # Serialize a user's submits (from all their keys) so they cannot overspend or double-create.
    conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
    if idempotency_key is not None:
        row = conn.execute(
            "SELECT job_id, body_hash FROM idempotency_keys WHERE user_id = %s"
            " AND idempotency_key = %s AND created_at > now() - interval '24 hours'",
            (user_id, idempotency_key),
        ).fetchone()
        if row is not None:
            if row["body_hash"] != request.body_hash():
                raise Conflict(
                    "this Idempotency-Key was already used with a different request body"
                )
            return Submitted(row["job_id"], created=False, publish_plan=False)
    limit = owner["max_active_jobs"] or max_active_jobs
    held_limit = None
    if limit is not None:
        rendering = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE user_id = %s"
            " AND status IN ('queued', 'running') AND held_limit IS NULL",
            (user_id,),
        ).fetchone()
        if rendering is not None and rendering["n"] >= limit:
            held_limit = limit
    job_id = new_job_id()
    geometry = geometry_for(request.quality, request.aspect_ratio, request.fps)
    reserve = Decimal(PRESETS[request.quality].min_credits)
    credits.reserve(
        conn,
        user_id,
        key_id,
        job_id,
        reserve,
        insert_job=lambda: conn.execute(
            "INSERT INTO jobs (id, key_id, user_id, code, class_name, quality, aspect_ratio, fps,"
            " width, height, metadata, webhook_url, cache_key, credits_reserved, held_limit, seed)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                job_id,
                key_id,
                user_id,
                request.code,
                request.class_name,
                request.quality,
                request.aspect_ratio,
                geometry.fps,
                geometry.width,
                geometry.height,
                Jsonb(request.metadata),
                request.webhook_url,
                request.cache_key(manim_version),
                reserve,
                held_limit,
                request.seed,
            ),
        ),
    )
    if idempotency_key is not None:
        conn.execute(
            "INSERT INTO idempotency_keys (user_id, key_id, idempotency_key, body_hash, job_id)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_id, idempotency_key) DO UPDATE"
            " SET key_id = EXCLUDED.key_id, body_hash = EXCLUDED.body_hash,"
            " job_id = EXCLUDED.job_id, created_at = now()",
            (user_id, key_id, idempotency_key, request.body_hash(), job_id),
        )
    if _complete_from_cache(conn, job_id, request.cache_key(manim_version), cache_scope):
        return Submitted(job_id, created=True, publish_plan=False)
    # published_at NULL: the dispatcher publishes it (fairly, after commit) once the job is not
    # held; the reaper neither republishes nor loses it meanwhile.
    conn.execute("INSERT INTO steps (job_id, kind, idx) VALUES (%s, 'plan', 0)", (job_id,))
    return Submitted(job_id, created=True, publish_plan=held_limit is None)


# The owner of a job: whose keys may share its cached result and read its logs (its user; one
# SQL expression, so that a different notion of owner changes one line).
OWNER_OF_JOB = "j.user_id"


def _complete_from_cache(conn: Conn, job_id: str, cache_key: str, scope: str = "owner") -> bool:
    """Complete a new job from an identical earlier one: the same owner's by default, any
    owner's with scope "global"; the log is copied only from the same owner's job."""
    if scope not in ("owner", "global"):
        raise ValueError(f"unknown cache scope {scope!r}")
    hit = conn.execute(
        "SELECT j.id, j.video_key, j.thumbnail_key, j.captions_key, j.log_key, j.renderer,"
        f" j.chunks_total, ({OWNER_OF_JOB}) = (SELECT {OWNER_OF_JOB} FROM jobs j WHERE j.id = %s)"
        " AS same_owner FROM jobs j WHERE j.cache_key = %s AND j.status = 'completed'"
        " AND j.id <> %s ORDER BY completed_at DESC LIMIT 1"
        if scope == "global"
        else "SELECT j.id, j.video_key, j.thumbnail_key, j.captions_key, j.log_key, j.renderer,"
        " j.chunks_total, true AS same_owner FROM jobs j WHERE j.cache_key = %s"
        " AND j.status = 'completed' AND j.id <> %s"
        f" AND ({OWNER_OF_JOB}) = (SELECT {OWNER_OF_JOB} FROM jobs j WHERE j.id = %s)"
        " ORDER BY completed_at DESC LIMIT 1",
        (job_id, cache_key, job_id) if scope == "global" else (cache_key, job_id, job_id),
    ).fetchone()
    if hit is None:
        return False
    conn.execute(
        "UPDATE jobs SET video_key = %s, thumbnail_key = %s, captions_key = %s, log_key = %s,"
        " renderer = %s, chunks_total = %s, chunks_done = %s, started_at = now() WHERE id = %s",
        (
            hit["video_key"],
            hit["thumbnail_key"],
            hit["captions_key"],
            hit["log_key"] if hit["same_owner"] else None,
            hit["renderer"],
            hit["chunks_total"],
            hit["chunks_total"] or 0,
            job_id,
        ),
    )
    finish_job(conn, job_id, "completed")
    return True


def _storable(text: str) -> bool:
    """PostgreSQL text holds neither NUL nor (as UTF-8) lone surrogates: such an id is unknown."""
    return "\x00" not in text and text.isprintable() and len(text) <= 200 and _utf8(text)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def get_job(conn: Conn, job_id: str, user_id: str | None = None) -> dict[str, Any]:
    """A job row; another user's job is reported exactly like a missing one."""
    row = None
    if _storable(job_id):
        row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None or (user_id is not None and row["user_id"] != user_id):
        raise NotFound(f"no job {job_id!r}")
    return row


def list_jobs(
    conn: Conn, user_id: str, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The user's jobs newest first; the cursor is the last job id of the previous page."""
    where, params = ["user_id = %s"], [user_id]
    if status:
        where.append("status = %s")
        params.append(status)
    if cursor:
        anchor = None
        if _storable(cursor):
            anchor = conn.execute(
                "SELECT created_at, id FROM jobs WHERE id = %s AND user_id = %s", (cursor, user_id)
            ).fetchone()
        if anchor is None:
            raise NotFound("unknown cursor")
        where.append("(created_at, id) < (%s, %s)")
        params.extend([anchor["created_at"], anchor["id"]])
    rows = conn.execute(
        f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC"
        " LIMIT %s",
        (*params, limit + 1),
    ).fetchall()
    next_cursor = rows[limit - 1]["id"] if len(rows) > limit else None
    return rows[:limit], next_cursor


def finish_job(
    conn: Conn,
    job_id: str,
    status: str,
    *,
    error: str | None = None,
    error_kind: str | None = None,
) -> bool:
    """The one terminal transition of a job, with its credit settlement; False if already ended."""
    _lock_job(conn, job_id)
    row = conn.execute(
        "UPDATE jobs SET status = %s, error = %s, error_kind = %s, completed_at = now(),"
        " held_limit = NULL,"
        " duration_ms = GREATEST(0, (extract(epoch FROM now() - COALESCE(started_at, created_at))"
        " * 1000)::integer)"
        " WHERE id = %s AND status IN ('queued', 'running')"
        " RETURNING user_id, quality, duration_ms",
        (status, error, error_kind, job_id),
    ).fetchone()
    if row is None:
        return False
    billed_ms = _billed_ms(conn, job_id, row["duration_ms"])
    conn.execute(
        "UPDATE steps SET status = 'failed', lease_until = NULL,"
        " finished_at = CASE WHEN status = 'running' THEN now() ELSE finished_at END"
        " WHERE job_id = %s AND status IN ('pending', 'running')",
        (job_id,),
    )
    conn.execute("UPDATE jobs SET billed_ms = %s WHERE id = %s", (billed_ms, job_id))
    charge_scene = status == "completed" or error_kind in CHARGED_KINDS
    cost = job_cost(row["quality"], billed_ms) if charge_scene else Decimal(0)
    settled = credits.settle(conn, row["user_id"], job_id, cost)
    if not settled:
        # The key cannot cover the render: like Kodisc, fail the job and release nothing.
        conn.execute(
            "UPDATE jobs SET status = 'failed', error = 'insufficient_credits',"
            " error_kind = 'insufficient_credits', credits_cost = 0 WHERE id = %s",
            (job_id,),
        )
    else:
        conn.execute("UPDATE jobs SET credits_cost = %s WHERE id = %s", (cost, job_id))
    return True


def _billed_ms(conn: Conn, job_id: str, duration_ms: int) -> int:
    """The time the job's owning attempts ran: the union of its steps' [start, finish) spans.

    Left out: queue waits between steps, and attempts the farm lost (a released or reaped
    attempt's span is replaced by the next claim's), so a stalled farm bills nothing for the
    stall. A job no step of which ever ran is billed its wall clock (nothing else is known).
    """
    row = conn.execute(
        "SELECT count(*) AS n, COALESCE(sum(extract(epoch FROM upper(r) - lower(r))), 0)"
        " AS seconds FROM unnest((SELECT range_agg(tstzrange(started_at,"
        " GREATEST(started_at, COALESCE(finished_at, now())))) FROM steps WHERE job_id = %s"
        " AND started_at IS NOT NULL AND status IN ('running', 'done', 'failed'))) AS r",
        (job_id,),
    ).fetchone()
    if row is None or not row["n"]:
        return duration_ms
    return min(duration_ms, int(float(row["seconds"]) * 1000))


def job_cost(quality: str, duration_ms: int) -> Decimal:
    preset = PRESETS[quality]
    raw = Decimal(str(preset.credits_per_second)) * Decimal(duration_ms) / 1000
    return raw.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def cancel_job(conn: Conn, job_id: str, user_id: str) -> dict[str, Any]:
    """Fail a job with ``canceled``; its running steps notice at their next heartbeat."""
    get_job(conn, job_id, user_id)
    finish_job(conn, job_id, "failed", error="canceled", error_kind="canceled")
    return get_job(conn, job_id, user_id)


# --- steps ------------------------------------------------------------------------------------


def claim_step(conn: Conn, job_id: str, kind: str, idx: int, lease_seconds: int) -> Claim | None:
    """Take a pending step for this attempt; None when it is done, taken, or its job has ended."""
    _lock_job(conn, job_id)
    row = conn.execute(
        "UPDATE steps s SET status = 'running', attempt = s.attempt + 1, started_at = now(),"
        " lease_until = now() + make_interval(secs => %s)"
        " FROM jobs j WHERE s.job_id = j.id AND s.job_id = %s AND s.kind = %s AND s.idx = %s"
        " AND s.status = 'pending' AND j.status IN ('queued', 'running')"
        " RETURNING s.attempt, s.first_animation, s.last_animation, j.quality",
        (lease_seconds, job_id, kind, idx),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, now())"
        " WHERE id = %s AND status = 'queued'",
        (job_id,),
    )
    return Claim(
        job_id,
        kind,
        idx,
        row["attempt"],
        row["quality"],
        row["first_animation"],
        row["last_animation"],
    )


def _lock_job(conn: Conn, job_id: str) -> None:
    """Every transition that touches a job's steps locks the job row first: one lock order,
    so two chunks failing at once (each failing the job) cannot deadlock."""
    conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))


def _owned(claim: Claim) -> tuple[Any, ...]:
    return (claim.job_id, claim.kind, claim.idx, claim.attempt)


_OWNED = "job_id = %s AND kind = %s AND idx = %s AND attempt = %s AND status = 'running'"


def _mark_done(conn: Conn, claim: Claim, **columns: Any) -> bool:
    """Mark the step done (setting ``columns``) if this attempt still owns it."""
    _lock_job(conn, claim.job_id)
    sets = "".join(f", {name} = %s" for name in columns)  # names come from this module only
    row = conn.execute(
        f"UPDATE steps SET status = 'done', lease_until = NULL, finished_at = now(){sets}"
        f" WHERE {_OWNED} RETURNING 1",
        (*columns.values(), *_owned(claim)),
    ).fetchone()
    return row is not None


def heartbeat(conn: Conn, claim: Claim, lease_seconds: int) -> bool:
    """Extend the lease; False when this attempt lost the step or the job ended (stop working)."""
    row = conn.execute(
        "UPDATE steps SET lease_until = now() + make_interval(secs => %s)"
        f" WHERE {_OWNED} AND EXISTS (SELECT 1 FROM jobs WHERE id = %s AND status = 'running')"
        " RETURNING 1",
        (lease_seconds, *_owned(claim), claim.job_id),
    ).fetchone()
    return row is not None


def record_plan(
    conn: Conn,
    claim: Claim,
    chunks: list[ChunkPlan],
    frames: list[int] | None = None,
    log_key: str | None = None,
    *,
    first_chunk_lease: int | None = None,
) -> list[int]:
    """Store the plan and create the chunk steps (with the frames each may render at most);
    returns their indices (empty when this attempt lost the plan). The dispatcher publishes
    them (farm.dispatch); the caller publishes nothing.

    ``first_chunk_lease``: the plan's own process draws chunk 0 (its hand-off): chunk 0 starts
    claimed by attempt 1 with this lease, in the same transaction (``first_chunk_claim``).
    If that process dies the lease runs out and the reaper hands chunk 0 on like any other."""
    if not _mark_done(conn, claim, log_key=log_key):
        return []
    for idx, chunk in enumerate(chunks):
        conn.execute(
            "INSERT INTO steps (job_id, kind, idx, first_animation, last_animation, seconds,"
            " planned_frames) VALUES (%s, 'chunk', %s, %s, %s, %s, %s)",
            (
                claim.job_id,
                idx,
                chunk.first,
                chunk.last,
                chunk.seconds,
                frames[idx] if frames is not None else None,
            ),
        )
    if first_chunk_lease is not None and chunks:
        conn.execute(
            "UPDATE steps SET status = 'running', attempt = 1, started_at = now(),"
            " published_at = now(), lease_until = now() + make_interval(secs => %s)"
            " WHERE job_id = %s AND kind = 'chunk' AND idx = 0",
            (first_chunk_lease, claim.job_id),
        )
    conn.execute("UPDATE jobs SET chunks_total = %s WHERE id = %s", (len(chunks), claim.job_id))
    return list(range(len(chunks)))


def first_chunk_claim(plan: Claim, chunk: ChunkPlan) -> Claim:
    """The claim ``record_plan(first_chunk_lease=...)`` gave the plan's process on chunk 0."""
    return Claim(plan.job_id, "chunk", 0, 1, plan.quality, chunk.first, chunk.last)


def add_plan_helpers(conn: Conn, plan: Claim, count: int) -> int:
    """Add ``count`` helper passes beside the plan (plan steps 1..count, farm.play_claims); the
    dispatcher publishes them. Returns how many were added (none when this attempt lost the
    plan, or an earlier attempt added them)."""
    _lock_job(conn, plan.job_id)
    if conn.execute(f"SELECT 1 FROM steps WHERE {_OWNED}", _owned(plan)).fetchone() is None:
        return 0
    rows = conn.execute(
        "INSERT INTO steps (job_id, kind, idx) SELECT %s, 'plan', i FROM generate_series(1, %s) i"
        " ON CONFLICT DO NOTHING RETURNING idx",
        (plan.job_id, count),
    ).fetchall()
    return len(rows)


def drop_plan_helpers(conn: Conn, job_id: str) -> None:
    """The plan has ended its own pass: helpers that have not started never will."""
    _lock_job(conn, job_id)
    conn.execute(
        "UPDATE steps SET status = 'done', error = 'not needed', finished_at = now()"
        " WHERE job_id = %s AND kind = 'plan' AND idx > 0 AND status = 'pending'",
        (job_id,),
    )


def plan_helper_running(conn: Conn, job_id: str, idx: int) -> bool:
    """Whether helper pass ``idx`` may still store what it draws (it runs, under a lease)."""
    row = conn.execute(
        "SELECT 1 FROM steps WHERE job_id = %s AND kind = 'plan' AND idx = %s"
        " AND status = 'running' AND lease_until > now()",
        (job_id, idx),
    ).fetchone()
    return row is not None


def finish_plan_helper(conn: Conn, claim: Claim) -> bool:
    """A helper pass has stored what it will; False when this attempt no longer owned it."""
    return _mark_done(conn, claim)


def plan_recorded(conn: Conn, job_id: str) -> bool:
    """Whether the job's plan step has ended (a helper that starts after it has nothing to do)."""
    row = conn.execute(
        "SELECT 1 FROM steps WHERE job_id = %s AND kind = 'plan' AND idx = 0"
        " AND status IN ('done', 'failed')",
        (job_id,),
    ).fetchone()
    return row is not None


def record_plan_without_chunks(conn: Conn, claim: Claim, log_key: str | None = None) -> bool:
    """Store a plan whose every animation is cached already: no chunk, straight to the stitch.
    False when this attempt no longer owns the plan."""
    if not _mark_done(conn, claim, log_key=log_key):
        return False
    conn.execute("UPDATE jobs SET chunks_total = 0 WHERE id = %s", (claim.job_id,))
    conn.execute(
        "INSERT INTO steps (job_id, kind, idx, published_at) VALUES (%s, 'stitch', 0, now())"
        " ON CONFLICT DO NOTHING",
        (claim.job_id,),
    )
    return True


def record_chunk(
    conn: Conn,
    claim: Claim,
    output_key: str,
    captions_key: str | None,
    frames: int,
    log_key: str | None = None,
) -> bool | None:
    """Store a rendered chunk. None: this attempt no longer owns it. True: the job can be stitched.

    The last chunk to finish creates the stitch step: fan-in never waits on a Celery chord.
    """
    done = _mark_done(
        conn,
        claim,
        output_key=output_key,
        captions_key=captions_key,
        frames=frames,
        log_key=log_key,
    )
    if not done:
        return None
    job = conn.execute(
        "UPDATE jobs SET chunks_done = chunks_done + 1 WHERE id = %s"
        " RETURNING chunks_done, chunks_total",
        (claim.job_id,),
    ).fetchone()
    if job is None or job["chunks_done"] < job["chunks_total"]:
        return False
    conn.execute(
        "INSERT INTO steps (job_id, kind, idx, published_at) VALUES (%s, 'stitch', 0, now())"
        " ON CONFLICT DO NOTHING",
        (claim.job_id,),
    )
    return True


def fall_back_to_cairo(conn: Conn, claim: Claim) -> list[int]:
    """Switch an OpenGL job to cairo after a scene error cairo may not raise; every chunk renders
    again (a video must come from one renderer). Returns the chunk indices to publish.

    Attempts keep counting up, so a chunk still rendering under OpenGL can no longer record.
    """
    _lock_job(conn, claim.job_id)
    switched = conn.execute(
        "UPDATE jobs SET renderer = 'cairo', chunks_done = 0 WHERE id = %s"
        " AND renderer = 'opengl' AND status = 'running' RETURNING 1",
        (claim.job_id,),
    ).fetchone()
    if switched is None:
        return []
    rows = conn.execute(
        "UPDATE steps SET status = 'pending', lease_until = NULL, published_at = now(),"
        " output_key = NULL, captions_key = NULL, error = NULL"
        " WHERE job_id = %s AND kind = 'chunk' RETURNING idx",
        (claim.job_id,),
    ).fetchall()
    return sorted(r["idx"] for r in rows)


def chunk_outputs(conn: Conn, job_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT idx, output_key, captions_key, frames, log_key, first_animation, last_animation"
        " FROM steps WHERE job_id = %s AND kind = 'chunk' ORDER BY idx",
        (job_id,),
    ).fetchall()


def step_logs(conn: Conn, job_id: str) -> list[str]:
    """The log objects the owning attempts of the job's plan and chunks recorded, in order."""
    rows = conn.execute(
        "SELECT log_key FROM steps WHERE job_id = %s AND log_key IS NOT NULL"
        " ORDER BY kind <> 'plan', idx",
        (job_id,),
    ).fetchall()
    return [r["log_key"] for r in rows]


def planned_frames(conn: Conn, claim: Claim) -> int | None:
    """The most frames the claimed chunk may render (its plan's), None for older plans."""
    row = conn.execute(
        "SELECT planned_frames FROM steps WHERE job_id = %s AND kind = %s AND idx = %s",
        (claim.job_id, claim.kind, claim.idx),
    ).fetchone()
    return None if row is None else row["planned_frames"]


def record_result(
    conn: Conn,
    claim: Claim,
    *,
    video_key: str,
    thumbnail_key: str,
    captions_key: str | None,
    renderer: str,
) -> bool:
    """Complete the job from its stitched files, if this stitch attempt still owns the step."""
    if not _mark_done(conn, claim):
        return False
    conn.execute(
        "UPDATE jobs SET video_key = %s, thumbnail_key = %s, captions_key = %s, renderer = %s"
        " WHERE id = %s",
        (video_key, thumbnail_key, captions_key, renderer, claim.job_id),
    )
    return finish_job(conn, claim.job_id, "completed")


def set_renderer(conn: Conn, job_id: str, renderer: str) -> None:
    """The renderer every chunk of the job uses (one video, one renderer)."""
    conn.execute("UPDATE jobs SET renderer = %s WHERE id = %s", (renderer, job_id))


def set_log_key(conn: Conn, job_id: str, log_key: str) -> None:
    conn.execute("UPDATE jobs SET log_key = %s WHERE id = %s", (log_key, job_id))


def fail_step(conn: Conn, claim: Claim, error: str, error_kind: str) -> bool:
    """A terminal failure (the scene's own error, or attempts exhausted): fail the whole job."""
    _lock_job(conn, claim.job_id)
    owned = conn.execute(
        "UPDATE steps SET status = 'failed', error = %s, lease_until = NULL,"
        f" finished_at = now() WHERE {_OWNED} RETURNING 1",
        (error, *_owned(claim)),
    ).fetchone()
    if owned is None:
        return False
    return finish_job(conn, claim.job_id, "failed", error=error, error_kind=error_kind)


def is_plan_helper(claim: Claim) -> bool:
    """A helper pass of a plan (plan steps past 0): it adds movies to the cache, nothing else."""
    return claim.kind == "plan" and claim.idx > 0


def release_step(conn: Conn, claim: Claim, error: str, max_attempts: int) -> str:
    """An infrastructure failure: the step goes back to pending, or the job fails once attempts
    are spent. Returns ``requeued`` (publish it again), ``failed`` (the job ended), ``dropped``
    (a plan helper: never retried) or ``lost`` (this attempt no longer owned the step: nothing
    to do)."""
    _lock_job(conn, claim.job_id)
    if is_plan_helper(claim):  # never again: the plan draws what a lost helper did not store
        return "dropped" if _mark_done(conn, claim, error=error) else "lost"
    if claim.attempt >= max_attempts:
        ended = fail_step(
            conn, claim, f"{error} (gave up after {claim.attempt} attempts)", "platform_error"
        )
        return "failed" if ended else "lost"
    row = conn.execute(
        "UPDATE steps SET status = 'pending', error = %s, lease_until = NULL,"
        f" published_at = now() WHERE {_OWNED} RETURNING 1",
        (error, *_owned(claim)),
    ).fetchone()
    return "requeued" if row is not None else "lost"


@dataclass(frozen=True)
class Requeue:
    job_id: str
    kind: str
    idx: int
    quality: str


@dataclass(frozen=True)
class Reaped:
    requeue: list[Requeue]  # steps to publish again
    ended: list[str]  # jobs the reaper failed (attempts spent): their job_ended is due


def reap(conn: Conn, *, max_attempts: int, requeue_after_seconds: int) -> Reaped:
    """Recover lost work: expired leases go back to pending (or fail the job once attempts are
    spent), and pending steps whose message may have been lost are published again.

    Candidates are read without locks, then each is re-checked under its job's lock (the lock
    order every transition uses), so several reapers and live workers never deadlock or act
    twice; duplicate messages are harmless anyway (claims are compare-and-set).
    """
    expired = conn.execute(
        "SELECT s.job_id, s.kind, s.idx, s.attempt, j.quality FROM steps s JOIN jobs j"
        " ON j.id = s.job_id WHERE s.status = 'running' AND s.lease_until < now()"
        " ORDER BY s.job_id"  # one lock order across concurrent reapers
    ).fetchall()
    out: list[Requeue] = []
    ended: list[str] = []
    for row in expired:
        claim = Claim(
            row["job_id"], row["kind"], row["idx"], row["attempt"], row["quality"], None, None
        )
        _lock_job(conn, claim.job_id)
        still_expired = conn.execute(
            f"SELECT 1 FROM steps WHERE {_OWNED} AND lease_until < now()", _owned(claim)
        ).fetchone()
        if still_expired is None:
            continue  # its worker heartbeated or finished meanwhile
        released = release_step(conn, claim, "worker lost (lease expired)", max_attempts)
        if released == "requeued":
            out.append(Requeue(row["job_id"], row["kind"], row["idx"], row["quality"]))
        elif released == "failed":
            ended.append(row["job_id"])
    stale = conn.execute(
        "SELECT s.job_id, s.kind, s.idx, j.quality FROM steps s JOIN jobs j ON j.id = s.job_id"
        " WHERE s.status = 'pending' AND j.status IN ('queued', 'running')"
        " AND s.published_at < now() - make_interval(secs => %s) ORDER BY s.job_id",
        (requeue_after_seconds,),
    ).fetchall()
    release_held(conn)  # the dispatcher publishes what it releases
    for row in stale:
        _lock_job(conn, row["job_id"])
        republish = conn.execute(
            "UPDATE steps SET published_at = now() WHERE job_id = %s AND kind = %s AND idx = %s"
            " AND status = 'pending' AND published_at < now() - make_interval(secs => %s)"
            " RETURNING 1",
            (row["job_id"], row["kind"], row["idx"], requeue_after_seconds),
        ).fetchone()
        if republish is not None:
            out.append(Requeue(row["job_id"], row["kind"], row["idx"], row["quality"]))
    return Reaped(out, ended)


def release_held(conn: Conn) -> list[str]:
    """Release held jobs (oldest first) of users now under the limit they were held at; the
    dispatcher then publishes their plans. Returns the released job ids."""
    users = conn.execute(
        "SELECT DISTINCT user_id FROM jobs WHERE held_limit IS NOT NULL AND status = 'queued'"
        " ORDER BY user_id"
    ).fetchall()
    out: list[str] = []
    for user in users:
        conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user["user_id"],))
        rendering = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE user_id = %s"
            " AND status IN ('queued', 'running') AND held_limit IS NULL",
            (user["user_id"],),
        ).fetchone()
        n = int(rendering["n"]) if rendering else 0
        held = conn.execute(
            "SELECT id, quality, held_limit FROM jobs WHERE user_id = %s"
            " AND held_limit IS NOT NULL AND status = 'queued' ORDER BY created_at, id",
            (user["user_id"],),
        ).fetchall()
        for job in held:
            if n >= job["held_limit"]:
                break
            _lock_job(conn, job["id"])
            released = conn.execute(
                "UPDATE jobs SET held_limit = NULL WHERE id = %s AND status = 'queued'"
                " AND held_limit IS NOT NULL RETURNING 1",
                (job["id"],),
            ).fetchone()
            if released is None:
                continue
            n += 1
            out.append(job["id"])
    return out


def oldest_queued_age(conn: Conn) -> dict[str, float]:
    """Seconds the oldest unstarted job of each quality has waited (the autoscaling signal).

    Held jobs (their user is at their concurrency limit) don't count: more workers can't help."""
    rows = conn.execute(
        "SELECT quality, extract(epoch FROM now() - min(created_at))::float AS age FROM jobs"
        " WHERE status = 'queued' AND held_limit IS NULL GROUP BY quality"
    ).fetchall()
    return {r["quality"]: r["age"] for r in rows}


def busy_render_steps(conn: Conn, quality: str) -> int:
    """Plan and chunk steps of this quality's jobs running now (each holds a render slot)."""
    row = conn.execute(
        "SELECT count(*) AS n FROM steps s JOIN jobs j ON j.id = s.job_id"
        " WHERE s.status = 'running' AND s.kind IN ('plan', 'chunk') AND j.quality = %s"
        " AND s.lease_until > now()",
        (quality,),
    ).fetchone()
    return int(row["n"]) if row else 0


def pending_render_steps(conn: Conn, quality: str) -> int:
    """Plan and chunk steps of this quality's unheld jobs waiting for a worker: each takes a
    render slot as soon as one claims it."""
    row = conn.execute(
        "SELECT count(*) AS n FROM steps s JOIN jobs j ON j.id = s.job_id"
        " WHERE s.status = 'pending' AND s.kind IN ('plan', 'chunk')"
        " AND j.status IN ('queued', 'running') AND j.held_limit IS NULL AND j.quality = %s",
        (quality,),
    ).fetchone()
    return int(row["n"]) if row else 0


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z, as Kodisc formats times."""
    if ts is None:
        return None
    utc = ts.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def job_document(job: dict[str, Any], url_for: Callable[[str], str]) -> dict[str, Any]:
    """The job as ``GET /api/v2/render/{jobId}`` and webhooks show it (Kodisc's fields first)."""
    result = None
    if job["status"] == "completed" and job["video_key"]:
        result = {
            "video": url_for(job["video_key"]),
            "thumbnail": url_for(job["thumbnail_key"]),
            # Kodisc always links a WebVTT file; jobs from before every stitch wrote one
            # (scenes without subcaptions) share the empty one.
            "captions": url_for(job["captions_key"] or EMPTY_CAPTIONS_KEY),
        }
    total = job["chunks_total"]
    done = job["chunks_done"]
    if job["status"] == "completed":
        fraction = 1.0
    elif total:
        fraction = round(done / (total + 1), 3)  # the stitch is the last step
    else:
        fraction = 0.0
    cost = job["credits_cost"]
    return {
        "jobId": job["id"],
        "endpoint": "render",
        "status": job["status"],
        # Kodisc: a number, "0 until the job completes".
        "creditsCost": float(cost) if cost is not None else 0,
        "durationMs": job["duration_ms"],
        "result": result,
        "error": job["error"],
        "metadata": job["metadata"],
        "createdAt": iso(job["created_at"]),
        "completedAt": iso(job["completed_at"]),
        "progress": {"chunksDone": done, "chunksTotal": total, "fraction": fraction},
        "quality": job["quality"],
        "aspectRatio": job["aspect_ratio"],
        "fps": job["fps"],
        "renderer": job["renderer"],
    }
