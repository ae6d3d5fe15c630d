"""Users and their credits (reserve, settle, refund, grant through one ledger; paid and a
monthly free allowance), per-user concurrency and rate limits, and idempotency.

API tests use their own app whose publisher only records, so nothing here renders; one test
runs a real failing scene through the worker to see a scene error charged end to end.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from api.app import get_services
from farm import credits, db, jobs, keys, users
from farm.config import Settings
from farm.presets import PRESETS
from tests.conftest import FARM, SLOT, Key, unique, wait_for
from tests.support import RecordingPublisher, drop_database, new_database

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
    """The API with a 1 request/s, burst 2 rate limit and one job rendering per user."""
    app = _app(
        settings.with_(rate_limit_per_second=1, rate_limit_burst=2, max_active_jobs_per_user=1)
    )
    yield app
    get_services(app).close()


def body(**fields: Any) -> dict[str, Any]:
    return {"code": SCENE.format(tag=unique()), "className": "Tiny", "quality": "low", **fields}


def ledger(pool: Any, user_id: str, job_id: str | None = None) -> list[tuple[str, Decimal]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind, amount FROM credit_ledger WHERE user_id = %s"
            " AND (%s::text IS NULL OR job_id = %s) ORDER BY id",
            (user_id, job_id, job_id),
        ).fetchall()
    return [(r["kind"], Decimal(r["amount"])) for r in rows]


def balance(pool: Any, user_id: str) -> Decimal:
    """The user's paid balance (these users have no free allowance), checked against the sum."""
    with pool.connection() as conn:
        value = credits.balance(conn, user_id)
        stored = conn.execute(
            "SELECT COALESCE(sum(amount), 0) AS s FROM credit_ledger WHERE user_id = %s",
            (user_id,),
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
    assert balance(pool, key.user_id) == 100 - PRESETS["low"].min_credits
    job = finish(pool, job_id, "completed")
    cost = jobs.job_cost("low", job["duration_ms"])
    # 10 s at 0.1 credits/s, plus the test's own time between its UPDATE and finish_job
    assert Decimal("1.00") <= cost <= Decimal("1.05")
    assert job["credits_cost"] == cost
    assert ledger(pool, key.user_id, job_id) == [
        ("reserve", Decimal(-1)),
        ("refund", Decimal(1)),
        ("settle", -cost),
    ]
    assert balance(pool, key.user_id) == 100 - cost


@pytest.mark.parametrize("error_kind", ["scene_error", "timeout"])
def test_the_scenes_own_failures_are_charged(pool: Any, make_key: Any, error_kind: str) -> None:
    key = make_key(credits=100)
    job_id = new_job(pool, key, seconds=20)
    job = finish(pool, job_id, "failed", error="boom", error_kind=error_kind)
    assert job["credits_cost"] == Decimal("2.00")
    assert balance(pool, key.user_id) == Decimal(98)


def test_platform_errors_and_cancels_are_refunded_in_full(pool: Any, make_key: Any) -> None:
    key = make_key(credits=100)
    platform = new_job(pool, key, seconds=30)
    finish(pool, platform, "failed", error="worker lost", error_kind="platform_error")
    canceled = new_job(pool, key, seconds=30)
    with pool.connection() as conn:
        job = jobs.cancel_job(conn, canceled, key.user_id)
    assert job["error_kind"] == "canceled" and job["credits_cost"] == 0
    for job_id in (platform, canceled):
        assert ledger(pool, key.user_id, job_id) == [
            ("reserve", Decimal(-1)),
            ("refund", Decimal(1)),
        ]
    assert balance(pool, key.user_id) == Decimal(100)


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
    assert ledger(pool, key.user_id, job_id) == [("reserve", Decimal(-1)), ("refund", Decimal(1))]
    assert balance(pool, key.user_id) == Decimal(1)


def test_ending_a_job_twice_charges_once(pool: Any, make_key: Any) -> None:
    key = make_key(credits=100)
    job_id = new_job(pool, key, seconds=10)
    finish(pool, job_id, "completed")
    with pool.connection() as conn:  # a duplicated task message ends it again
        assert not jobs.finish_job(conn, job_id, "completed")
        assert not jobs.finish_job(conn, job_id, "failed", error="x", error_kind="scene_error")
    assert [k for k, _ in ledger(pool, key.user_id, job_id)] == ["reserve", "refund", "settle"]
    assert balance(pool, key.user_id) == Decimal(99)


def test_grant_goes_through_the_ledger(pool: Any, make_key: Any, farm_env: Any) -> None:
    key = make_key(credits=0)
    out = subprocess.run(
        [FARM, "keys", "grant", key.id, "7.5"],
        env=farm_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["credits"]["total"] == 7.5
    assert ledger(pool, key.user_id) == [("grant", Decimal("7.5"))]
    # taking back more than the key holds is refused: the balance never goes below zero
    refused = subprocess.run(
        [FARM, "keys", "grant", key.id, "-8"], env=farm_env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "cannot take 8" in refused.stderr
    assert balance(pool, key.user_id) == Decimal("7.5")


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
    # Charged for the time its attempt ran: more than nothing, never more than the wall time
    assert Decimal(0) < cost <= jobs.job_cost("low", job["durationMs"])
    assert balance(pool, key.user_id) == Decimal(50) - cost
    assert [k for k, _ in ledger(pool, key.user_id, job["jobId"])][:2] == ["reserve", "refund"]


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
    assert balance(pool, key.user_id) == 0
    assert [k for k, _ in ledger(pool, key.user_id)].count("reserve") == 5


def test_429_with_retry_after_when_over_the_rate(tight_app: Any, make_key: Any) -> None:
    key = make_key()
    same_user = make_key(credits=0, user_id=key.user_id)
    client = tight_app.test_client()
    first = client.get("/api/v2/me", headers=key.headers)
    # every answer shows the budget left
    assert first.headers["RateLimit-Limit"] == "2" and first.headers["RateLimit-Remaining"] == "1"
    # the user's keys share one bucket
    assert client.get("/api/v2/me", headers=same_user.headers).status_code == 200
    limited = client.get("/api/v2/me", headers=key.headers)
    assert limited.status_code == 429 and limited.get_json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # another user has their own bucket
    assert client.get("/api/v2/me", headers=make_key().headers).status_code == 200


def test_jobs_over_the_users_concurrency_wait_queued(
    tight_app: Any, pool: Any, make_key: Any
) -> None:
    # Given a user allowed one job rendering at once, with two keys
    key = make_key(credits=10)
    other_key = make_key(credits=0, user_id=key.user_id)
    client = tight_app.test_client()
    publisher = get_services(tight_app).publisher
    first = client.post("/api/v2/render", headers=key.headers, json=body())
    assert first.status_code == 202
    # When the second key submits while the first job renders
    with pool.connection() as conn:  # (a second per test keeps under the 1 request/s limit)
        conn.execute("SELECT pg_sleep(1)")
    second = client.post("/api/v2/render", headers=other_key.headers, json=body())
    # Then it is accepted and queued, its credits reserved, but nothing is published yet
    assert second.status_code == 202 and second.get_json()["status"] == "queued"
    held_id = second.get_json()["jobId"]
    assert balance(pool, key.user_id) == 8
    assert not any(s[:2] == ("step", held_id) for s in publisher.sent)

    def reap() -> list[tuple[str, str]]:
        with pool.connection() as conn:
            done = jobs.reap(conn, max_attempts=2, requeue_after_seconds=30)
        return [(r.job_id, r.kind) for r in done.requeue if r.job_id == held_id]

    assert reap() == []
    with pool.connection() as conn:
        assert users.active_jobs(conn, key.user_id) == {"rendering": 1, "held": 1}
    # When the first job ends, the reaper publishes the held one's plan (the session's
    # scheduler, when another test started it, may get there first)
    finish(pool, first.get_json()["jobId"], "failed", error="x", error_kind="platform_error")
    assert reap() in ([(held_id, "plan")], [])
    assert reap() == []
    with pool.connection() as conn:
        assert users.active_jobs(conn, key.user_id) == {"rendering": 1, "held": 0}
        assert jobs.get_job(conn, held_id)["held_limit"] is None


def test_a_users_own_concurrency_limit_wins(pool: Any, make_key: Any) -> None:
    key = make_key(credits=10)
    with pool.connection() as conn:
        users.update_user(conn, key.user_id, max_active_jobs=3)
        request = lambda: jobs.JobRequest(  # noqa: E731
            code=SCENE.format(tag=unique()), class_name="Tiny", quality="low"
        )
        made = [
            jobs.submit_job(conn, key.id, request(), manim_version="t", max_active_jobs=1)
            for _ in range(4)
        ]
    assert [m.publish_plan for m in made] == [True, True, True, False]


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
    assert balance(pool, key.user_id) == 9
    with pool.connection() as conn:  # one plan step, which the dispatcher publishes once
        plans = conn.execute(
            "SELECT count(*) AS n FROM steps WHERE job_id = %s", (first.get_json()["jobId"],)
        ).fetchone()
    assert plans["n"] == 1
    # Same key, different body: 409, nothing charged
    other = client.post("/api/v2/render", headers=headers, json=body())
    assert other.status_code == 409 and other.get_json()["error"] == "conflict"
    assert balance(pool, key.user_id) == 9
    # Another key of the same user replays the same job (Kodisc scopes everything per user)
    staging = make_key(credits=0, user_id=key.user_id)
    replay = client.post(
        "/api/v2/render",
        headers={**staging.headers, "Idempotency-Key": headers["Idempotency-Key"]},
        json=payload,
    )
    assert replay.status_code == 202 and replay.get_json()["jobId"] == first.get_json()["jobId"]
    conflict = client.post(
        "/api/v2/render",
        headers={**staging.headers, "Idempotency-Key": headers["Idempotency-Key"]},
        json=body(),
    )
    assert conflict.status_code == 409
    assert balance(pool, key.user_id) == 9
    with pool.connection() as conn:  # still one plan step
        plans = conn.execute(
            "SELECT count(*) AS n FROM steps WHERE job_id = %s", (first.get_json()["jobId"],)
        ).fetchone()
    assert plans["n"] == 1
    # Another user's identical Idempotency-Key is independent
    stranger = make_key(credits=10)
    response = client.post(
        "/api/v2/render",
        headers={**stranger.headers, "Idempotency-Key": headers["Idempotency-Key"]},
        json=payload,
    )
    assert response.status_code == 202
    assert response.get_json()["jobId"] != first.get_json()["jobId"]
    assert balance(pool, stranger.user_id) == 9 and balance(pool, key.user_id) == 9
    with pool.connection() as conn:
        theirs = jobs.get_job(conn, response.get_json()["jobId"], stranger.user_id)
    assert theirs["user_id"] == stranger.user_id


def test_openapi_documents_the_limits(client: Any) -> None:
    spec = client.get("/api/v2/openapi.json").get_json()
    post = spec["paths"]["/api/v2/render"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    assert {"402", "409", "429"} <= set(post["responses"])
    assert "Retry-After" in post["responses"]["429"]["headers"]
    description = spec["info"]["description"]
    assert "kodisc-event" in description and "kodisc-signature" in description
    assert "farm-event" in description and "farm-signature" in description


# --- users: paid credits and a free allowance that renews each month ------------------------


def _free_user(pool: Any, make_key: Any, allowance: int, paid: int) -> Key:
    key = make_key(credits=paid)
    with pool.connection() as conn:
        users.update_user(conn, key.user_id, free_allowance=Decimal(allowance))
    return key


def test_spending_draws_on_the_free_allowance_first(pool: Any, make_key: Any) -> None:
    key = _free_user(pool, make_key, allowance=3, paid=10)
    with pool.connection() as conn:
        assert credits.balances(conn, key.user_id) == credits.Balance(Decimal(10), Decimal(3))
    job_id = new_job(pool, key, seconds=50)  # reserve 1, then costs 5 credits
    with pool.connection() as conn:
        assert credits.balances(conn, key.user_id).free == 2
    job = finish(pool, job_id, "completed")
    cost = jobs.job_cost("low", job["duration_ms"])  # about 5: 50 s plus the test's own time
    with pool.connection() as conn:
        b = credits.balances(conn, key.user_id)
    assert (b.free, b.paid) == (0, 10 - (cost - 3))  # 3 from free, the rest from paid


def test_the_free_allowance_renews_each_month(pool: Any, make_key: Any) -> None:
    # Given a user who spent all of last month's allowance
    key = _free_user(pool, make_key, allowance=5, paid=0)
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO credit_ledger (user_id, kind, amount, pool, period) VALUES"
            " (%s, 'settle', -5, 'free',"
            " (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date)",
            (key.user_id,),
        )
        # Then this month they have the whole allowance again
        assert credits.balances(conn, key.user_id).free == 5


def test_me_splits_paid_and_free(client: Any, pool: Any, make_key: Any) -> None:
    key = _free_user(pool, make_key, allowance=200, paid=1840)
    me = client.get("/api/v2/me", headers=key.headers).get_json()
    assert me["credits"] == {"paid": 1840, "free": 200, "total": 2040}
    assert me["limits"]["freeAllowance"] == 200


def test_a_users_keys_share_jobs_and_credits(client: Any, pool: Any, make_key: Any) -> None:
    # Given one user with two keys (Kodisc: one per environment), and a stranger
    prod = make_key(credits=10)
    staging = make_key(credits=0, user_id=prod.user_id)
    stranger = make_key(credits=10)
    job_id = new_job(pool, prod, seconds=1)
    # Then the other key sees (and may cancel) the job; the stranger gets 404
    assert client.get(f"/api/v2/render/{job_id}", headers=staging.headers).status_code == 200
    listed = client.get("/api/v2/render", headers=staging.headers).get_json()["jobs"]
    assert [j["jobId"] for j in listed] == [job_id]
    assert client.get(f"/api/v2/render/{job_id}", headers=stranger.headers).status_code == 404
    assert client.get("/api/v2/render", headers=stranger.headers).get_json()["jobs"] == []
    # And both keys show the same balance
    for key in (prod, staging):
        me = client.get("/api/v2/me", headers=key.headers).get_json()
        assert me["userId"] == prod.user_id and me["credits"]["total"] == 9
    assert client.delete(f"/api/v2/render/{job_id}", headers=staging.headers).status_code == 200
    assert balance(pool, prod.user_id) == 10


def _farm(farm_env: Any, *args: str, ok: bool = True) -> Any:
    out = subprocess.run([FARM, *args], env=farm_env, capture_output=True, text=True)
    assert (out.returncode == 0) == ok, out.stderr
    return json.loads(out.stdout) if ok else out.stderr


def test_users_and_keys_commands(farm_env: Any, pool: Any) -> None:
    name = f"acme-{unique()}"
    user = _farm(
        farm_env, "users", "create", "--name", name, "--credits", "100", "--free-allowance", "20"
    )
    assert user["credits"] == {"paid": 100, "free": 20, "total": 120}
    first = _farm(farm_env, "keys", "create", "--name", "prod", "--user", name, "--json")
    second = _farm(farm_env, "keys", "create", "--name", "dev", "--user", user["userId"], "--json")
    assert first["userId"] == second["userId"] == user["userId"]
    assert first["key"].startswith(first["keyPrefix"]) and len(first["keyPrefix"]) == 16
    shown = _farm(farm_env, "users", "show", name)
    assert {k["keyId"] for k in shown["keys"]} == {first["keyId"], second["keyId"]}
    assert _farm(farm_env, "users", "grant", name, "-30")["credits"]["paid"] == 70
    assert "cannot take 71" in _farm(farm_env, "users", "grant", name, "-71", ok=False)
    updated = _farm(farm_env, "users", "update", name, "--max-active-jobs", "3")
    assert updated["maxActiveJobs"] == 3 and updated["freeAllowance"] == 20
    assert "no single user" in _farm(farm_env, "users", "show", "nobody-" + unique(), ok=False)
    listed = _farm(farm_env, "users", "list")
    assert user["userId"] in {u["userId"] for u in listed}


@contextmanager
def database_before(settings: Settings, migration: int, tag: str) -> Iterator[str]:
    """The URL of a fresh database migrated up to (not including) ``migration``; dropped after."""
    import psycopg

    url = new_database(settings.database_url, f"farm_test_{SLOT + 100}_{tag}_{unique()}")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (number integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, file, sql in db.migrations():
                if number < migration:
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (number, file))
        yield url
    finally:
        drop_database(url)


def test_migration_gives_each_existing_key_its_own_user(settings: Settings) -> None:
    # Given a database at the last migration before users, with two keys, a job and a ledger
    import psycopg

    with database_before(settings, 10, "users") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            for key_id in ("key_00000000000000a1", "key_00000000000000b2"):
                conn.execute(
                    "INSERT INTO api_keys (id, name, prefix, key_hash, webhook_secret)"
                    " VALUES (%s, 'old', 'farm_live_x', %s, 's')",
                    (key_id, key_id.encode()),
                )
                conn.execute(
                    "INSERT INTO credit_ledger (key_id, kind, amount) VALUES (%s, 'grant', 7)",
                    (key_id,),
                )
            conn.execute(
                "INSERT INTO jobs (id, key_id, code, class_name, quality, aspect_ratio, fps,"
                " width, height, cache_key) VALUES ('job_old', 'key_00000000000000a1', 'x', 'A',"
                " 'low', '16:9', 15, 854, 480, 'c')"
            )
        # When the users migrations run
        applied = db.migrate(url)
        assert "0010_users.sql" in applied
        # Then each key has its own user, owning its job and credits
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            owners = conn.execute("SELECT id, user_id FROM api_keys ORDER BY id").fetchall()
            assert [o["user_id"] for o in owners] == [
                "usr_00000000000000a1",
                "usr_00000000000000b2",
            ]
            job = conn.execute("SELECT user_id FROM jobs WHERE id = 'job_old'").fetchone()
            assert job["user_id"] == "usr_00000000000000a1"
            for owner in owners:
                assert credits.balances(conn, owner["user_id"]) == credits.Balance(
                    Decimal(7), Decimal(0)
                )
            assert keys.get_key(conn, "key_00000000000000b2").user_id == "usr_00000000000000b2"


def test_migration_scopes_idempotency_keys_to_the_user(settings: Settings) -> None:
    # Given a database before 0012 where two keys of one user used the same Idempotency-Key
    # (the second later), and a stranger used it too
    import psycopg

    with database_before(settings, 12, "idem") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO users (id, name) VALUES ('usr_a', 'a'), ('usr_b', 'b')")
            for key_id, user_id in (("key_a1", "usr_a"), ("key_a2", "usr_a"), ("key_b", "usr_b")):
                conn.execute(
                    "INSERT INTO api_keys (id, name, prefix, key_hash, webhook_secret, user_id)"
                    " VALUES (%s, 'k', 'farm_live_x', %s, 's', %s)",
                    (key_id, key_id.encode(), user_id),
                )
                conn.execute(
                    "INSERT INTO jobs (id, key_id, user_id, code, class_name, quality,"
                    " aspect_ratio, fps, width, height, cache_key)"
                    " VALUES (%s, %s, %s, 'x', 'A', 'low', '16:9', 15, 854, 480, 'c')",
                    ("job_" + key_id, key_id, user_id),
                )
            for key_id, age in (("key_a1", 60), ("key_a2", 10), ("key_b", 90)):
                conn.execute(
                    "INSERT INTO idempotency_keys (key_id, idempotency_key, body_hash, job_id,"
                    " created_at) VALUES (%s, 'order-1', 'h', %s,"
                    " now() - make_interval(secs => %s))",
                    (key_id, "job_" + key_id, age),
                )
        # When 0012 runs
        assert "0012_idempotency_per_user.sql" in db.migrate(url)
        # Then the user holds the newest use of the Idempotency-Key; the stranger keeps theirs
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT user_id, key_id, job_id FROM idempotency_keys ORDER BY user_id"
            ).fetchall()
        assert rows == [("usr_a", "key_a2", "job_key_a2"), ("usr_b", "key_b", "job_key_b")]
