"""HTTP views: parse, authenticate, call ``farm``, shape the answer. No business rules here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from psycopg import Connection

from api.app import get_services
from api.schemas import JobListQuerySchema, RenderRequestSchema, json_problem
from farm import credits, endings, jobs, keys, metrics, users
from farm.config import Settings
from farm.errors import FarmError, InvalidField
from farm.presets import MANIM_VERSION
from farm.ratelimit import RateLimiter
from farm.storage import Storage

bp = Blueprint("v2", __name__)
_render_request = RenderRequestSchema()
_list_query = JobListQuerySchema()
LOG_VIEW_BYTES = 256 * 1024


def _settings() -> Settings:
    return get_services().settings


def _storage() -> Storage:
    return get_services().storage


@contextmanager
def _conn() -> Iterator[Connection[dict[str, Any]]]:
    """One connection per request, committed when the view returns, rolled back on error."""
    with get_services().pool.connection() as conn:
        yield conn


def _authenticate(conn: Connection[dict[str, Any]]) -> keys.ApiKey:
    """The caller's key, checked before anything else of the request is read; then the user's
    request rate (all their keys share one bucket)."""
    key = keys.authenticate(conn, request.headers.get("Authorization"))
    services = get_services()
    limits = services.settings
    limiter = RateLimiter(services.redis, limits.rate_limit_per_second, limits.rate_limit_burst)
    g.quota = limiter.check(key.user_id)  # the after_request hook reports it in headers
    return key


def _json_body() -> dict[str, Any]:
    """The body as a JSON object that PostgreSQL can store; 400 naming what is wrong."""
    raw = request.get_data(cache=False)  # 413 above MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except RecursionError:
        raise FarmError("body: JSON nested too deeply") from None
    except ValueError as exc:  # malformed JSON, bad UTF-8, integers past 4300 digits
        raise FarmError(f"body: malformed JSON ({exc})") from None
    if not isinstance(body, dict):
        raise FarmError("body: must be a JSON object")
    problem = json_problem(body, "body")
    if problem:
        raise InvalidField(problem.removeprefix("body."))
    return body


@bp.get("/")
def playground() -> Response:
    """The playground page: static HTML and JS (api/static) that call this API from the browser."""
    return current_app.send_static_file("index.html")


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    try:
        with _conn() as conn:
            conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["postgres"] = f"error: {exc.__class__.__name__}"
    try:
        get_services().redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    try:
        _storage().ping()
        checks["s3"] = "ok"
    except Exception as exc:
        checks["s3"] = f"error: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ready else "unavailable", "checks": checks}), (
        200 if ready else 503
    )


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = metrics.render_latest()
    return Response(body, content_type=content_type)


@bp.get("/api/v2/openapi.json")
def openapi() -> Response:
    from api.openapi import build_spec

    return jsonify(build_spec())


@bp.post("/api/v2/render")
def submit() -> tuple[Response, int]:
    """Queue a render; 202 with the job id. The dispatcher publishes the plan after commit."""
    with _conn() as conn:  # 401 comes first, whatever the body
        key = _authenticate(conn)
    body = _json_body()
    data = _render_request.load(body)
    webhook_url = data["webhookUrl"]
    if "webhookUrl" in body and body["webhookUrl"] is None:
        webhook_url = ""  # an explicit null opts out of the key's default webhook
    job_request = jobs.JobRequest(
        code=data["code"],
        class_name=data["className"],
        quality=data["quality"],
        aspect_ratio=data["aspectRatio"],
        fps=data["fps"],
        metadata=data["metadata"],
        webhook_url=webhook_url,
        seed=data["seed"],
    )
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= 255
        and idempotency_key.isascii()
        and idempotency_key.isprintable()
    ):
        raise FarmError("Idempotency-Key: must be 1 to 255 printable ASCII characters")
    with _conn() as conn:
        submitted = jobs.submit_job(
            conn,
            key.id,
            job_request,
            manim_version=MANIM_VERSION,
            idempotency_key=idempotency_key,
            max_active_jobs=_settings().max_active_jobs_per_user,
            cache_scope=_settings().cache_scope,
        )
        job = jobs.get_job(conn, submitted.job_id)
    publisher = get_services().publisher
    # The plan step is not published here: the scheduler's dispatcher sends it (farm.dispatch).
    if submitted.created:
        metrics.JOBS_SUBMITTED.labels(quality=job_request.quality).inc()
        if job["status"] in jobs.TERMINAL:  # served from the cache: metrics and webhook fire
            with _conn() as conn:
                endings.job_ended(conn, submitted.job_id, lambda j: publisher.webhook(j, 1))
    return jsonify({"jobId": job["id"], "status": job["status"], "endpoint": "render"}), 202


@bp.get("/api/v2/render")
def list_jobs() -> Response:
    with _conn() as conn:
        key = _authenticate(conn)
        query = _list_query.load(request.args.to_dict())
        rows, cursor = jobs.list_jobs(
            conn,
            key.user_id,
            status=query.get("status"),
            limit=query["limit"],
            cursor=query.get("cursor"),
        )
    url_for = _storage().url_for
    return jsonify({"jobs": [jobs.job_document(r, url_for) for r in rows], "nextCursor": cursor})


@bp.get("/api/v2/render/<job_id>")
def get_job(job_id: str) -> Response:
    with _conn() as conn:
        key = _authenticate(conn)
        job = jobs.get_job(conn, job_id, key.user_id)
    return jsonify(jobs.job_document(job, _storage().url_for))


@bp.delete("/api/v2/render/<job_id>")
def cancel_job(job_id: str) -> Response:
    with _conn() as conn:
        key = _authenticate(conn)
        before = jobs.get_job(conn, job_id, key.user_id)
        job = jobs.cancel_job(conn, job_id, key.user_id)
    if before["status"] not in jobs.TERMINAL and job["error_kind"] == "canceled":
        publisher = get_services().publisher
        with _conn() as conn:
            endings.job_ended(conn, job_id, lambda j: publisher.webhook(j, 1))
    return jsonify(jobs.job_document(job, _storage().url_for))


@bp.get("/api/v2/render/<job_id>/logs")
def job_logs(job_id: str) -> Response:
    with _conn() as conn:
        key = _authenticate(conn)
        job = jobs.get_job(conn, job_id, key.user_id)
    text = ""
    if job["log_key"]:
        try:
            text = _storage().get_bytes(job["log_key"]).decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
    truncated = len(text) > LOG_VIEW_BYTES or "[log truncated" in text
    return jsonify({"jobId": job_id, "log": text[:LOG_VIEW_BYTES], "truncated": truncated})


@bp.get("/api/v2/me")
def me() -> Response:
    """Kodisc's fields (user, key, credits split paid/free), then the farm's extensions."""
    settings = _settings()
    with _conn() as conn:
        key = _authenticate(conn)
        user = users.get_user(conn, key.user_id)
        balance = credits.balances(conn, user.id)
        active = users.active_jobs(conn, user.id)
    return jsonify(
        {
            "userId": user.id,
            "keyId": key.id,
            "keyPrefix": key.prefix,
            "credits": balance.as_json(),
            "name": key.name,
            "createdAt": jobs.iso(key.created_at),
            "limits": {
                "requestsPerSecond": settings.rate_limit_per_second,
                "requestBurst": settings.rate_limit_burst,
                "maxActiveJobs": user.max_active_jobs or settings.max_active_jobs_per_user,
                "activeJobs": active["rendering"],
                "heldJobs": active["held"],
                "freeAllowance": float(user.free_allowance),
            },
        }
    )
