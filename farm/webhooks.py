"""Webhooks: who gets a job's terminal event, how it is signed, sent (SSRF-guarded) and recorded.

Delivery series: a job's terminal transition starts series 1; ``farm webhooks replay`` starts
the next. Attempts are numbered ``SERIES_STRIDE * (series - 1) + n`` (n = 1 for the first try,
then one per retry), so the Celery message ``(job_id, attempt)`` names its series and try, and
``UNIQUE (job_id, event, attempt)`` in ``webhook_deliveries`` makes every try happen at most
once: a task claims its try by inserting the row, commits, and only then sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import urllib3

from farm.jobs import TERMINAL, job_document
from farm.keys import Conn

# The SSRF guard lives in farm.netguard (scene assets use it too).
from farm.netguard import Refused, parse_allowlist, pick_address, pinned_pool, target
from farm.netguard import forbidden as forbidden  # re-exported: callers know it from here

SERIES_STRIDE = 1000
# Kodisc's header names, so receivers written for Kodisc verify our deliveries unchanged; the
# farm's own names carry the same values (receivers written for earlier farm versions).
SIGNATURE_HEADER = "kodisc-signature"
EVENT_HEADER = "kodisc-event"
FARM_SIGNATURE_HEADER = "farm-signature"
FARM_EVENT_HEADER = "farm-event"
USER_AGENT = "manim-render-farm-webhooks/1"
# What an in-flight try's row says until its result is recorded (a crash leaves it so).
SENDING = "sending"

# --- signing --------------------------------------------------------------------------------


def sign(secret: str, raw_body: bytes, timestamp: int) -> str:
    """The signature header's value: ``t=<unix seconds>,v1=<hex HMAC-SHA256("<t>.<body>")>``,
    keyed with the key's webhook secret (Kodisc's scheme)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, raw_body: bytes, tolerance: int = 300, now: float | None = None
) -> bool:
    """True when ``header`` signs ``raw_body`` with ``secret`` within ``tolerance`` seconds.

    Never raises: a malformed header, a wrong signature or a stale timestamp all give False.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")  # only the first "=" splits
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, raw_body, timestamp).split(",v1=", 1)[1]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def payload(job: dict[str, Any], url_for: Callable[[str], str]) -> bytes:
    """The body: the same document as ``GET /api/v2/render/{jobId}``."""
    return json.dumps(job_document(job, url_for), separators=(",", ":"), default=_json).encode()


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def headers(
    event: str, secret: str, raw_body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    signature = sign(secret, raw_body, t)
    return {
        "content-type": "application/json",
        EVENT_HEADER: event,
        SIGNATURE_HEADER: signature,
        FARM_EVENT_HEADER: event,
        FARM_SIGNATURE_HEADER: signature,
        "user-agent": USER_AGENT,
    }


# --- who gets what ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    secret: str
    event: str  # completed | failed


def event_for(job: dict[str, Any]) -> str | None:
    return str(job["status"]) if job["status"] in TERMINAL else None


def resolve_url(job_url: str | None, key_url: str | None) -> str | None:
    """The job's URL overrides the key's default; "" (an explicit null) opts out."""
    if job_url == "":
        return None
    return job_url or key_url or None


def target_for(conn: Conn, job: dict[str, Any]) -> Target | None:
    """Where and how a terminal job's event goes; None when the job has no webhook (yet)."""
    event = event_for(job)
    if event is None:
        return None
    key = conn.execute(
        "SELECT webhook_url, webhook_secret FROM api_keys WHERE id = %s", (job["key_id"],)
    ).fetchone()
    if key is None:
        return None
    url = resolve_url(job["webhook_url"], key["webhook_url"])
    if url is None:
        return None
    return Target(url=url, secret=str(key["webhook_secret"]), event=event)


# --- attempts and series ----------------------------------------------------------------------


def split_attempt(attempt: int) -> tuple[int, int]:
    """(series, try within the series) of a global attempt number."""
    return (attempt - 1) // SERIES_STRIDE + 1, (attempt - 1) % SERIES_STRIDE + 1


def claim_attempt(conn: Conn, job_id: str, event: str, url: str, attempt: int) -> bool:
    """Record a try before sending it; False when it already exists (a duplicated message)."""
    row = conn.execute(
        "INSERT INTO webhook_deliveries (job_id, event, url, attempt, status_code, duration_ms,"
        " error) VALUES (%s, %s, %s, %s, 0, 0, %s) ON CONFLICT DO NOTHING RETURNING id",
        (job_id, event, url, attempt, SENDING),
    ).fetchone()
    return row is not None


def retry_countdown(
    conn: Conn, job_id: str, event: str, attempt: int, delays: Sequence[float]
) -> float | None:
    """Seconds until the next try of ``attempt``'s series, or None when the series is spent.

    Delays are offsets from the series' first try, not from the try that just failed.
    """
    _, n = split_attempt(attempt)
    if n > len(delays):
        return None
    first = attempt - n + 1
    row = conn.execute(
        "SELECT extract(epoch FROM created_at + make_interval(secs => %s) - now())::float AS due"
        " FROM webhook_deliveries WHERE job_id = %s AND event = %s AND attempt = %s",
        (float(delays[n - 1]), job_id, event, first),
    ).fetchone()
    due = float(row["due"]) if row is not None else float(delays[n - 1])
    return max(0.0, due)


def list_deliveries(conn: Conn, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT job_id, event, url, attempt, status_code, duration_ms, error, created_at"
        " FROM webhook_deliveries WHERE job_id = %s ORDER BY attempt",
        (job_id,),
    ).fetchall()
    for row in rows:
        row["series"], row["try"] = split_attempt(row["attempt"])
    return rows


def next_series_attempt(conn: Conn, job_id: str) -> int:
    """The first attempt number of a new series (1 when the job has no deliveries at all)."""
    row = conn.execute(
        "SELECT max(attempt) AS last FROM webhook_deliveries WHERE job_id = %s", (job_id,)
    ).fetchone()
    if row is None or row["last"] is None:
        return 1
    series, _ = split_attempt(int(row["last"]))
    return series * SERIES_STRIDE + 1


def due_deliveries(
    conn: Conn, delays: Sequence[float], grace_seconds: float = 60.0, horizon_hours: int = 24
) -> list[tuple[str, int]]:
    """(job_id, attempt) of tries that should have happened ``grace_seconds`` ago but didn't.

    For the scheduler's retry pump: a first try whose message was lost (or a job the reaper
    failed, which publishes nothing), and retries whose countdown message died with a worker.
    Publishing one twice is harmless: the try is claimed by its row.
    """
    missing_first = conn.execute(
        "SELECT j.id FROM jobs j JOIN api_keys k ON k.id = j.key_id"
        " WHERE j.status IN ('completed', 'failed')"
        " AND j.completed_at BETWEEN now() - make_interval(hours => %s)"
        "   AND now() - make_interval(secs => %s)"
        " AND COALESCE(j.webhook_url, k.webhook_url, '') <> ''"
        " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id)",
        (horizon_hours, grace_seconds),
    ).fetchall()
    stalled = conn.execute(
        "SELECT d.job_id, d.attempt FROM webhook_deliveries d"
        " JOIN webhook_deliveries f ON f.job_id = d.job_id AND f.event = d.event"
        "  AND f.attempt = d.attempt - (d.attempt - 1) %% %(stride)s"
        " WHERE d.error IS NOT NULL AND d.error <> %(sending)s AND d.error NOT LIKE 'refused%%'"
        " AND (d.attempt - 1) %% %(stride)s + 1 <= cardinality(%(delays)s::float8[])"
        " AND d.created_at > now() - make_interval(hours => %(horizon)s)"
        " AND f.created_at + make_interval(secs => (%(delays)s::float8[])"
        "   [(d.attempt - 1) %% %(stride)s + 1] + %(grace)s) < now()"
        " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries n WHERE n.job_id = d.job_id"
        "   AND n.event = d.event AND n.attempt = d.attempt + 1)",
        {
            "stride": SERIES_STRIDE,
            "sending": SENDING,
            "delays": [float(x) for x in delays],
            "horizon": horizon_hours,
            "grace": float(grace_seconds),
        },
    ).fetchall()
    return [(r["id"], 1) for r in missing_first] + [
        (r["job_id"], int(r["attempt"]) + 1) for r in stalled
    ]


# --- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status_code: int  # 0: no HTTP response (refused, unreachable, timed out before headers)
    duration_ms: int
    error: str | None
    kind: str  # success | http_error | timeout | connect_error | refused (the metric's outcome)

    @property
    def retryable(self) -> bool:
        return self.kind not in ("success", "refused")


def send(
    url: str,
    body: bytes,
    request_headers: dict[str, str],
    *,
    allowlist: Sequence[str],
    timeout: float,
    ca_bundle: str = "",
) -> Outcome:
    """POST ``body`` once; success is a 2xx within ``timeout`` seconds. Redirects aren't followed.

    Refusals (not https, a forbidden address) happen before any connection is made.
    """
    started = time.monotonic()

    def done(status: int, error: str | None, kind: str) -> Outcome:
        return Outcome(status, int((time.monotonic() - started) * 1000), error, kind)

    try:
        where = target(url)
        allow = parse_allowlist(allowlist)
        ip = pick_address(where.host, where.port, allow)
    except Refused as exc:
        return done(0, str(exc), "refused")
    except ValueError as exc:  # a malformed URL or port
        return done(0, f"refused: invalid URL ({exc})", "refused")
    except OSError as exc:  # DNS failure: maybe transient, so retried
        return done(0, f"could not resolve the URL's host: {exc}", "connect_error")

    pool = pinned_pool(where, ip, allowlist=allow, timeout=timeout, ca_bundle=ca_bundle)
    try:
        response = pool.urlopen(
            "POST",
            where.path,
            body=body,
            headers={**request_headers, "host": where.host_header},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        status = int(response.status)
        response.release_conn()
    except urllib3.exceptions.TimeoutError:
        return done(0, f"timed out: no response within {timeout:g} s", "timeout")
    except Refused as exc:  # the connected address was forbidden after all
        return done(0, str(exc), "refused")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return done(0, f"connection failed: {exc}", "connect_error")
    finally:
        pool.close()
    if time.monotonic() - started > timeout:
        return done(status, f"timed out: HTTP {status} came after {timeout:g} s", "timeout")
    if 200 <= status < 300:
        return done(status, None, "success")
    return done(status, f"HTTP {status}", "http_error")


def record_attempt(conn: Conn, job_id: str, event: str, attempt: int, outcome: Outcome) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET status_code = %s, duration_ms = %s, error = %s"
        " WHERE job_id = %s AND event = %s AND attempt = %s",
        (outcome.status_code, outcome.duration_ms, outcome.error, job_id, event, attempt),
    )
