"""The fair dispatcher against a real PostgreSQL (its own database): who gets the next place.

No workers here: a "claim" is the step's compare-and-set, done by the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from farm import db, jobs, keys
from farm.config import Settings
from farm.dispatch import Dispatcher, Policy
from tests.conftest import TEST_DB

SCENE = "from manim import *\nclass S(Scene):\n    def construct(self):\n        self.wait()\n"


@pytest.fixture()
def conn(settings: Settings) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    name = f"{TEST_DB}_dispatch"
    admin = psycopg.conninfo.make_conninfo(settings.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as a:
        a.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        a.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(settings.database_url, dbname=name)
    db.migrate(url)
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row, autocommit=True) as c:
        yield c


def _owner(conn: Any, name: str) -> str:
    """A new user (the dispatcher's owner) with one key; returns the user id."""
    key = keys.create_key(conn, name, Decimal(10_000), None).api_key
    _KEYS[key.user_id] = key.id
    return key.user_id


_KEYS: dict[str, str] = {}


def _submit(conn: Any, owner: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        request = jobs.JobRequest(f"{SCENE}# {owner} {i}\n", "S", quality="low")
        submitted = jobs.submit_job(conn, _KEYS[owner], request, manim_version="0.22.0")
        out.append(submitted.job_id)
    return out


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int, str]] = []
        self.priorities: list[int | None] = []

    def __call__(
        self, job_id: str, kind: str, idx: int, quality: str, priority: int | None = None
    ) -> None:
        self.sent.append((job_id, kind, idx, quality))
        self.priorities.append(priority)


def _round(dispatcher: Dispatcher, conn: Any) -> list[Any]:
    with conn.transaction():
        return dispatcher.run_once(conn)


def _claim_all(conn: Any, job_ids: list[str]) -> None:
    """Workers take every published message (status running, as claim_step does)."""
    conn.execute(
        "UPDATE steps SET status = 'running', attempt = attempt + 1 WHERE status = 'pending'"
        " AND published_at IS NOT NULL AND job_id = ANY(%s)",
        (job_ids,),
    )


def test_a_flood_does_not_starve_a_single_job(conn: Any) -> None:
    flood, single = _owner(conn, "flood"), _owner(conn, "single")
    flood_jobs = _submit(conn, flood, 200)
    (single_job,) = _submit(conn, single, 1)
    publish = Recorder()
    dispatcher = Dispatcher(Policy(queue_depth=1), publish)
    # The queue holds one message; the flood's oldest job got it, then the single job's plan
    # goes out too although the queue is full: its owner has nothing in flight
    first = _round(dispatcher, conn)
    assert [(p.owner, p.priority) for p in first] == [(flood, 0), (single, 0)]
    assert publish.sent[-1] == (single_job, "plan", 0, "low")
    # Nothing is published twice, nothing more while the queue is full
    assert _round(dispatcher, conn) == []
    # Workers take both; the next place goes to the flood, at a lower priority
    _claim_all(conn, [*flood_jobs, single_job])
    second = _round(dispatcher, conn)
    assert [(p.owner, p.priority) for p in second] == [(flood, 3)]
    published = conn.execute(
        "SELECT count(*) AS n FROM steps WHERE published_at IS NOT NULL"
    ).fetchone()
    assert published["n"] == 3
    # Steps of an owner with more work in flight go out at a lower priority still
    conn.execute("UPDATE steps SET status = 'done' WHERE status IN ('running', 'pending')"
                 " AND published_at IS NOT NULL")  # fmt: skip
    conn.execute(
        "UPDATE steps SET status = 'running' WHERE job_id = ANY(%s) AND published_at IS NULL",
        (flood_jobs[4:7],),
    )
    later = _round(dispatcher, conn)
    assert [p.owner for p in later] == [flood] and later[0].priority == 6


def test_round_robin_and_owner_cap(conn: Any) -> None:
    owners = [_owner(conn, f"o{i}") for i in range(3)]
    submitted = {o: _submit(conn, o, 5) for o in owners}
    every = [j for js in submitted.values() for j in js]
    dispatcher = Dispatcher(Policy(queue_depth=6, owner_max_slots=2), Recorder())
    picks = _round(dispatcher, conn)
    # Six places, three owners, each capped at two: two each, interleaved
    assert sorted(p.owner for p in picks) == sorted(owners * 2)
    assert {p.owner for p in picks[:3]} == set(owners)
    _claim_all(conn, every)
    # All at their cap while their steps run: nothing more is sent
    assert _round(dispatcher, conn) == []
    # One owner's step finishes: only that owner gets a new place
    done = conn.execute(
        "UPDATE steps SET status = 'done' WHERE job_id = %s RETURNING job_id",
        (submitted[owners[1]][0],),
    ).fetchall()
    assert done
    again = _round(dispatcher, conn)
    assert [p.owner for p in again] == [owners[1]]


def test_owner_metrics_keep_label_count_bounded(conn: Any) -> None:
    owners = [_owner(conn, f"m{i}") for i in range(12)]
    for i, owner in enumerate(owners):
        _submit(conn, owner, 1 + i)  # the last owners have the most waiting
    _round(Dispatcher(Policy(queue_depth=1, metric_owners=3), Recorder()), conn)
    labels = {
        sample.labels["owner"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "farm_owner_waiting_steps"
        for sample in metric.samples
    }
    assert len(labels) == 4 and "other" in labels
    assert set(labels) - {"other"} == set(owners[-3:])
    assert sum(labels.values()) == sum(1 + i for i in range(12))  # as the round found them
