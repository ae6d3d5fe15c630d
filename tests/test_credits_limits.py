"""Credits (reserve, settle, refund, grant through one ledger), rate limits and idempotency.

API tests use their own app whose publisher only records, so nothing here renders; one test
runs a real failing scene through the worker to see a scene error charged end to end.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from api.app import get_services
from farm import credits, jobs
from farm.config import Settings
from farm.presets import PRESETS
from tests.conftest import FARM, Key, unique, wait_for
from tests.support import RecordingPublisher

SCENE = """
from manim import *

class Tiny(Scene):
    def construct(self):
        self.wait(0.2)  # {tag}
"""
BROKEN = """
from manim import *

class Broken(Scene):
    def construct(self):
        raise RuntimeError("this scene is broken on purpose {tag}")
"""


def _app(settings: Settings) -> Any:
    from api.app import create_app

    app = create_app(settings)
    get_services(app).publisher = RecordingPublisher()
    return app


@pytest.fixture(scope="module")
def quiet_app(settings: Settings) -> Iterator[Any]:
    """The API with the session's settings, publishing nothing."""
    app = _app(settings)
    yield app
    get_services(app).close()


@pytest.fixture(scope="module")
def tight_app(settings: Settings) -> Iterator[Any]:
    """The API with a 1 request/s, burst 2 rate limit and one unfinished job per key."""
    app = _app(
        settings.with_(rate_limit_per_second=1, rate_limit_burst=2, max_running_jobs_per_key=1)
    )
    yield app
    get_services(app).close()


def body(**fields: Any) -> dict[str, Any]:
    return {"code": SCENE.format(tag=unique()), "className": "Tiny", "quality": "low", **fields}


def ledger(pool: Any, key_id: str, job_id: str | None = None) -> list[tuple[str, Decimal]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind, amount FROM credit_ledger WHERE key_id = %s"
            " AND (%s::text IS NULL OR job_id = %s) ORDER BY id",
            (key_id, job_id, job_id),
        ).fetchall()
    return [(r["kind"], Decimal(r["amount"])) for r in rows]


def balance(pool: Any, key_id: str) -> Decimal:
    with pool.connection() as conn:
        value = credits.balance(conn, key_id)
        stored = conn.execute(
            "SELECT COALESCE(sum(amount), 0) AS s FROM credit_ledger WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert value == Decimal(stored["s"])
    return value


def new_job(pool: Any, key: Key, quality: str = "low", seconds: float = 10.0) -> str:
    """A job that has been running for ``seconds`` (nothing is published)."""
    with pool.connection() as conn:
        request = jobs.JobRequest(
            code=SCENE.format(tag=unique()), class_name="Tiny", quality=quality
        )
        job_id = jobs.submit_job(conn, key.id, request, manim_version="test").job_id
        conn.execute(
            "UPDATE jobs SET status = 'running', started_at = now() - make_interval(secs => %s)"
            " WHERE id = %s",
            (seconds, job_id),
        )
    return job_id


def finish(pool: Any, job_id: str, status: str, **kw: Any) -> dict[str, Any]:
    with pool.connection() as conn:
        assert jobs.finish_job(conn, job_id, status, **kw)
        return jobs.get_job(conn, job_id)


# --- the ledger through each kind of ending ---------------------------------------------------


def test_completed_job_reserves_then_settles_its_real_cost(pool: Any, make_key: Any) -> None:
    key = make_key(credits=100)
    job_id = new_job(pool, key, seconds=10)
    assert balance(pool, key.id) == 100 - PRESETS["low"].min_credits
    job = finish(pool, job_id, "completed")
    cost = jobs.job_cost("low", job["duration_ms"])
    assert cost == Decimal("1.00")  # 10 s at 0.1 credits/s
    assert job["credits_cost"] == cost
    assert ledger(pool, key.id, job_id) == [
        ("reserve", Decimal(-1)),
        ("refund", Decimal(1)),
        ("settle", -cost),
    ]
    assert balance(pool, key.id) == 100 - cost


@pytest.mark.parametrize("error_kind", ["scene_error", "timeout"])
def test_the_scenes_own_failures_are_charged(pool: Any, make_key: Any, error_kind: str) -> None:
    key = make_key(credits=100)
    job_id = new_job(pool, key, seconds=20)
    job = finish(pool, job_id, "failed", error="boom", error_kind=error_kind)
    assert job["credits_cost"] == Decimal("2.00")
    assert balance(pool, key.id) == Decimal(98)


def test_platform_errors_and_cancels_are_refunded_in_full(pool: Any, make_key: Any) -> None:
    key = make_key(credits=100)
    platform = new_job(pool, key, seconds=30)
    finish(pool, platform, "failed", error="worker lost", error_kind="platform_error")
    canceled = new_job(pool, key, seconds=30)
    with pool.connection() as conn:
        job = jobs.cancel_job(conn, canceled, key.id)
    assert job["error_kind"] == "canceled" and job["credits_cost"] == 0
    for job_id in (platform, canceled):
        assert ledger(pool, key.id, job_id) == [("reserve", Decimal(-1)), ("refund", Decimal(1))]
    assert balance(pool, key.id) == Decimal(100)


def test_a_cost_the_key_cannot_cover_fails_the_job_and_releases_nothing(
    pool: Any, make_key: Any, storage: Any
) -> None:
    # Given a key holding exactly the minimum reserve, and a render that cost 10 credits
    key = make_key(credits=1)
    job_id = new_job(pool, key, seconds=100)
    with pool.connection() as conn:
        conn.execute(
            "UPDATE jobs SET video_key = 'jobs/x/video.mp4',"
            " thumbnail_key = 'jobs/x/thumb.jpg' WHERE id = %s",
            (job_id,),
        )
    # When it completes
    job = finish(pool, job_id, "completed")
    # Then it failed with insufficient_credits, shows no result, and the reserve came back
    assert (job["status"], job["error"], job["error_kind"]) == (
        "failed",
        "insufficient_credits",
        "insufficient_credits",
    )
    assert jobs.job_document(job, storage.url_for)["result"] is None
    assert job["credits_cost"] == 0
    assert ledger(pool, key.id, job_id) == [("reserve", Decimal(-1)), ("refund", Decimal(1))]
    assert balance(pool, key.id) == Decimal(1)


def test_ending_a_job_twice_charges_once(pool: Any, make_key: Any) -> None:
    key = make_key(credits=100)
    job_id = new_job(pool, key, seconds=10)
    finish(pool, job_id, "completed")
    with pool.connection() as conn:  # a duplicated task message ends it again
        assert not jobs.finish_job(conn, job_id, "completed")
        assert not jobs.finish_job(conn, job_id, "failed", error="x", error_kind="scene_error")
    assert [k for k, _ in ledger(pool, key.id, job_id)] == ["reserve", "refund", "settle"]
    assert balance(pool, key.id) == Decimal(99)


def test_grant_goes_through_the_ledger(pool: Any, make_key: Any, farm_env: Any) -> None:
    key = make_key(credits=0)
    out = subprocess.run(
        [FARM, "keys", "grant", key.id, "7.5"],
        env=farm_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["credits"] == 7.5
    assert ledger(pool, key.id) == [("grant", Decimal("7.5"))]
    # taking back more than the key holds is refused: the balance never goes below zero
    refused = subprocess.run(
        [FARM, "keys", "grant", key.id, "-8"], env=farm_env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "cannot take 8" in refused.stderr
    assert balance(pool, key.id) == Decimal("7.5")


def test_a_scene_error_is_charged_end_to_end(
    client: Any, pool: Any, make_key: Any, worker: Any
) -> None:
    key = make_key(credits=50)
    response = client.post(
        "/api/v2/render",
        headers=key.headers,
        json={"code": BROKEN.format(tag=unique()), "className": "Broken", "quality": "low"},
    )
    job = wait_for(client, key, response.get_json()["jobId"])
    assert job["status"] == "failed" and "broken on purpose" in job["error"]
    cost = Decimal(str(job["creditsCost"]))
    assert cost == jobs.job_cost("low", job["durationMs"])
    assert balance(pool, key.id) == Decimal(50) - cost
    assert [k for k, _ in ledger(pool, key.id, job["jobId"])][:2] == ["reserve", "refund"]


# --- through the API --------------------------------------------------------------------------


def test_402_when_the_key_cannot_cover_the_minimum(quiet_app: Any, make_key: Any) -> None:
    key = make_key(credits=1)
    client = quiet_app.test_client()
    response = client.post("/api/v2/render", headers=key.headers, json=body(quality="medium"))
    assert response.status_code == 402
    assert response.get_json()["error"] == "insufficient_credits"
    assert client.post("/api/v2/render", headers=key.headers, json=body()).status_code == 202
    assert client.post("/api/v2/render", headers=key.headers, json=body()).status_code == 402


def test_concurrent_submits_cannot_overspend(quiet_app: Any, pool: Any, make_key: Any) -> None:
    # Given a key that can afford exactly 5 low-quality reserves
    key = make_key(credits=5)
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def submit() -> None:
        client = quiet_app.test_client()
        barrier.wait()
        statuses.append(client.post("/api/v2/render", headers=key.headers, json=body()).status_code)

    # When 12 submits race
    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then exactly 5 got in, and the balance is exactly zero
    assert sorted(statuses) == [202] * 5 + [402] * 7
    assert balance(pool, key.id) == 0
    assert [k for k, _ in ledger(pool, key.id)].count("reserve") == 5


def test_429_with_retry_after_when_over_the_rate(tight_app: Any, make_key: Any) -> None:
    key = make_key()
    client = tight_app.test_client()
    codes = [client.get("/api/v2/me", headers=key.headers) for _ in range(3)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    limited = codes[2]
    assert limited.status_code == 429 and limited.get_json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # another key has its own bucket
    assert client.get("/api/v2/me", headers=make_key().headers).status_code == 200


def test_429_when_a_key_has_too_many_unfinished_jobs(
    tight_app: Any, pool: Any, make_key: Any
) -> None:
    key = make_key(credits=10)
    client = tight_app.test_client()
    assert client.post("/api/v2/render", headers=key.headers, json=body()).status_code == 202
    response = client.post("/api/v2/render", headers=key.headers, json=body())
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert balance(pool, key.id) == 9  # the refused submit reserved nothing


def test_idempotent_replay_returns_the_same_job_and_charges_once(
    quiet_app: Any, pool: Any, make_key: Any
) -> None:
    key = make_key(credits=10)
    client = quiet_app.test_client()
    payload = body()
    headers = {**key.headers, "Idempotency-Key": f"order-{unique()}"}
    first = client.post("/api/v2/render", headers=headers, json=payload)
    again = client.post("/api/v2/render", headers=headers, json=payload)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["jobId"] == again.get_json()["jobId"]
    assert balance(pool, key.id) == 9
    publisher = get_services(quiet_app).publisher
    assert sum(1 for s in publisher.sent if s[:2] == ("step", first.get_json()["jobId"])) == 1
    # Same key, different body: 409, nothing charged
    other = client.post("/api/v2/render", headers=headers, json=body())
    assert other.status_code == 409 and other.get_json()["error"] == "conflict"
    assert balance(pool, key.id) == 9
    # Another key may use the same Idempotency-Key independently
    second_key = make_key(credits=10)
    response = client.post(
        "/api/v2/render",
        headers={**second_key.headers, "Idempotency-Key": headers["Idempotency-Key"]},
        json=payload,
    )
    assert response.status_code == 202
    assert response.get_json()["jobId"] != first.get_json()["jobId"]


def test_openapi_documents_the_limits(client: Any) -> None:
    spec = client.get("/api/v2/openapi.json").get_json()
    post = spec["paths"]["/api/v2/render"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    assert {"402", "409", "429"} <= set(post["responses"])
    assert "Retry-After" in post["responses"]["429"]["headers"]
    description = spec["info"]["description"]
    assert "farm-event" in description and "farm-signature" in description
