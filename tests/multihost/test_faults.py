"""Network and service faults on the multi-host bed, each with the recovery bound it holds.

The bed's settings (tests/multihost/netbed.py): lease 6 s, heartbeat 1 s, reaper every 1 s,
messages presumed lost after 15 s, 3 attempts. Chunks sleep a few seconds so a fault lands
mid-chunk. "Completes once" means: one terminal transition (one reserve and one settle in the
credit ledger), and once it completed nothing about the job changes any more: not its
objects in S3 (no orphan chunk, no overwritten log), not its cost, not its ledger.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import requests

from farm.jobs import job_cost
from tests.multihost.conftest import QUICK, Farm, settle
from tests.multihost.netbed import NetBed
from tests.scenes import SLOW_RENDER as SLOW
from tests.scenes import uncached

pytestmark = pytest.mark.slow

LEASE = 6
REAPER = 1
REQUEUE_AFTER = 15
# farm.storage's S3 client: a request on a kept-alive connection to a vanished S3 waits for
# its 60 s read timeout; the retries on new connections then fail at once.
S3_GIVE_UP = 70
# A re-render of one of the tests' chunks, plus stitching, on the shared 2-core machine.
REDO = 40

_RECEIVED = re.compile(r"Task farm\.\w+\[([0-9a-f-]+)\] received")
_ATTEMPT_KEY = re.compile(
    r"logs/(?P<log_kind>plan|chunk|stitch)-(?P<log_idx>\d+)-a(?P<log_a>\d+)\.log$"
    r"|chunks/(?P<chunk>\d{4})-a(?P<chunk_a>\d+)\."
    r"|result-a(?P<result_a>\d+)/"
)
_ENDED = re.compile(r"Task farm\.\w+\[([0-9a-f-]+)\] (succeeded|raised|retry|ignored|INTERNAL)")


def worker_settled(bed: NetBed, host: str) -> bool:
    """Every task the worker received has ended (a zombie attempt has done all it will do)."""
    text = bed.procs[host].log.read_text(errors="replace")
    received = set(_RECEIVED.findall(text))
    ended = {m[0] for m in _ENDED.findall(text)}
    return received <= ended


class Completed:
    """What a completed job looks like; ``unchanged()`` checks that nothing touched it since."""

    def __init__(self, farm: Farm, key: dict[str, str], job_id: str) -> None:
        self.farm, self.key, self.job_id = farm, key, job_id
        self.job = farm.get(key, job_id)
        self.objects = farm.objects(job_id)
        self.ledger = farm.ledger(job_id)

    def check(self) -> None:
        assert self.job["status"] == "completed", self.job["error"]
        kinds = [e["kind"] for e in self.ledger]
        assert kinds.count("reserve") == 1 and kinds.count("settle") == 1, self.ledger
        assert not [k for k in self.objects if "/chunks/" in k], self.objects  # stitch removed
        # Billing: the owning attempts' time, never a stalled or lost attempt's
        steps = [s for s in self.farm.steps(self.job_id) if s["status"] == "done"]
        owned = sum((s["finished_at"] - s["started_at"]).total_seconds() for s in steps)
        bound = job_cost("low", int((owned + LEASE + REAPER + 5) * 1000))
        assert Decimal(str(self.job["creditsCost"])) <= bound, (self.job["creditsCost"], owned)

    def orphans(self) -> list[str]:
        """Objects an attempt that does not own its step wrote (farm/objects.py's keys)."""
        owning = {(s["kind"], s["idx"]): s["attempt"] for s in self.farm.steps(self.job_id)}
        found = []
        for key in self.farm.objects(self.job_id):
            m = _ATTEMPT_KEY.search(key)
            if m is None:
                continue
            if m["log_kind"]:
                step, attempt = (m["log_kind"], int(m["log_idx"])), int(m["log_a"])
            elif m["chunk"]:
                step, attempt = ("chunk", int(m["chunk"])), int(m["chunk_a"])
            else:
                step, attempt = ("stitch", 0), int(m["result_a"])
            if owning.get(step) != attempt:
                found.append(key)
        return found

    def unchanged(self) -> None:
        assert self.orphans() == []  # every lost attempt deleted what it wrote
        job = self.farm.get(self.key, self.job_id)
        for field in ("status", "creditsCost", "durationMs", "completedAt", "progress"):
            assert job[field] == self.job[field], (field, job[field], self.job[field])
        now = self.farm.objects(self.job_id)
        for key, etag in now.items():  # nothing new, nothing overwritten
            assert self.objects.get(key) == etag, (key, etag, self.objects.get(key))
        gone = set(self.objects) - set(now)  # only a lost attempt's own objects may go
        assert all(_ATTEMPT_KEY.search(k) for k in gone), gone
        assert self.farm.ledger(self.job_id) == self.ledger  # no second credit


def _after_zombie(bed: NetBed, farm: Farm, host: str, done: Completed) -> None:
    settle(lambda: worker_settled(bed, host), 60, f"{host}'s late attempt to finish")
    time.sleep(2)  # anything it would still write lands now
    done.unchanged()


def test_worker_link_cut_mid_chunk(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    job_id = farm.post(key, uncached(SLOW.format(sleep=4)), "Slow")
    host = farm.wait_running_chunk(job_id)
    bed.cut(host)
    cut_at = time.monotonic()
    # Bound: the lease expires, the reaper re-queues, the other worker renders and stitches
    job = farm.wait(key, job_id, timeout=LEASE + REAPER + REDO, what="complete on the other host")
    done = Completed(farm, key, job_id)
    done.check()
    print(f"\nlink cut: completed {time.monotonic() - cut_at:.1f} s after the cut")
    bed.mend(host)
    _after_zombie(bed, farm, host, done)
    assert job["status"] == "completed"


@pytest.mark.parametrize("service", ["postgres", "redis", "s3"])
def test_one_service_cut_from_a_worker_mid_chunk(bed: NetBed, farm: Farm, service: str) -> None:
    key = farm.key()
    job_id = farm.post(key, uncached(SLOW.format(sleep=4)), "Slow")
    host = farm.wait_running_chunk(job_id)
    bed.block(host, service)
    cut_at = time.monotonic()
    # Bounds: PostgreSQL cut: the lease expires and the other host redoes the chunk. S3 cut:
    # the worker still heartbeats while its upload waits; once its S3 client gives up
    # (S3_GIVE_UP) the step is released and the other host redoes it. Redis
    # cut: the chunk still records and its worker stitches (PostgreSQL and S3 are reachable);
    # REQUEUE_AFTER covers a message the cut worker could not send.
    extra = {"postgres": 0, "redis": REQUEUE_AFTER, "s3": S3_GIVE_UP}[service]
    bound = LEASE + REAPER + REDO + extra
    try:
        farm.wait(key, job_id, timeout=bound, what=f"complete with {host} cut from {service}")
    finally:
        took = time.monotonic() - cut_at
        bed.unblock(host, service)
    done = Completed(farm, key, job_id)
    done.check()
    print(f"\n{service} cut from {host}: completed {took:.1f} s after the cut")
    _after_zombie(bed, farm, host, done)
    # The worker is useful again: a new job completes (any host may take it)
    again = farm.post(key, uncached(QUICK), "Quick")
    assert farm.wait(key, again, timeout=REDO + REQUEUE_AFTER)["status"] == "completed"


def test_api_partitioned_from_redis_publishes_from_the_outbox(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    bed.block("api", "redis")  # the API and the scheduler's dispatcher lose Redis
    try:
        job_id = farm.post(key, uncached(QUICK), "Quick")  # accepted: committed to PostgreSQL
        time.sleep(3)
        (plan,) = [s for s in farm.steps(job_id) if s["kind"] == "plan"]
        assert plan["status"] == "pending"
        with farm.db() as conn:
            row = conn.execute(
                "SELECT published_at FROM steps WHERE job_id = %s AND kind = 'plan'", (job_id,)
            ).fetchone()
        assert row["published_at"] is None  # waiting in the outbox, not lost in a failed send
    finally:
        bed.unblock("api", "redis")
    healed = time.monotonic()
    # Bound: the dispatcher's next round (a failed send is retried within seconds) + render
    job = farm.wait(key, job_id, timeout=REDO, what="be published after the partition")
    assert job["status"] == "completed", job["error"]
    print(f"\nAPI/Redis partition: completed {time.monotonic() - healed:.1f} s after healing")


def test_postgres_restart_under_load(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    auth = {"Authorization": key["Authorization"]}
    jobs = [farm.post(key, uncached(SLOW.format(sleep=2)), "Slow") for _ in range(2)]
    farm.wait_running_chunk(jobs[0])
    answers: list[tuple[int, float, dict[str, Any] | None, str | None]] = []
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                if n % 10 == 0:
                    r = session.post(
                        f"{bed.api_url}/api/v2/render",
                        json={"code": uncached(QUICK), "className": "Quick", "quality": "low"},
                        headers=auth,
                        timeout=30,
                    )
                    if r.status_code == 202:
                        accepted.append(r.json()["jobId"])
                else:
                    r = session.get(
                        f"{bed.api_url}/api/v2/render/{jobs[0]}", headers=auth, timeout=30
                    )
                body = (
                    r.json()
                    if r.headers.get("content-type", "").startswith("application/json")
                    else None
                )
                answers.append(
                    (r.status_code, time.monotonic() - started, body, r.headers.get("Retry-After"))
                )
            except requests.RequestException as exc:
                answers.append((0, time.monotonic() - started, {"exception": str(exc)}, None))
            time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(1)
        bed.stop("postgres", signal.SIGINT)  # fast shutdown: every connection is dropped
        time.sleep(5)
        down_answers = len(answers)
        bed.start("postgres")
        bed.wait_service("postgres")
        back = time.monotonic()
        # Bound: the API answers 200 again within 10 s of PostgreSQL being back
        settle(lambda: bool(answers) and answers[-1][0] == 200 and len(answers) > down_answers,
               10, "the API to answer 200 again")  # fmt: skip
        recovered = time.monotonic() - back
        time.sleep(2)
    finally:
        stop.set()
        loader.join(timeout=60)
    codes = [a[0] for a in answers]
    assert 503 in codes, codes  # the outage was seen
    for status, took, body, retry_after in answers:
        assert status in (200, 202, 503), (status, body)
        assert took < 10, (status, took)  # never held longer than the pool's wait
        if status == 503:
            assert body is not None and body["error"] == "unavailable" and body["message"]
            assert retry_after is not None
    print(f"\nPostgreSQL restart: {codes.count(503)} answers were 503, API back {recovered:.1f} s"
          f" after PostgreSQL; {len(accepted)} jobs accepted during the test")  # fmt: skip
    # Nothing lost: every job accepted before or during the outage completes, once
    for job_id in [*jobs, *accepted]:
        job = farm.wait(key, job_id, timeout=LEASE + REAPER + 3 * REDO, what="survive")
        assert job["status"] == "completed", job["error"]
        Completed(farm, key, job_id).check()


def test_s3_unavailable_for_a_minute(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    job_id = farm.post(key, uncached(SLOW.format(sleep=2)), "Slow")
    farm.wait_running_chunk(job_id)
    bed.stop("s3")
    down_at = time.monotonic()
    statuses = set()
    while time.monotonic() - down_at < 60:
        with farm.db() as conn:
            statuses.add(
                conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()[
                    "status"
                ]
            )
        time.sleep(2)
    bed.start("s3")
    bed.wait_until(bed.s3_ready, 60, "S3 to come back")
    back = time.monotonic()
    # Bound: within LEASE + REDO of S3's return the job has ended, completed or clearly failed
    job = farm.wait(key, job_id, timeout=LEASE + REAPER + REDO, what="end after S3 returned")
    if job["status"] == "failed":
        assert "attempt" in (job["error"] or ""), job["error"]  # says why: attempts spent
    else:
        Completed(farm, key, job_id).check()
    print(f"\nS3 down 60 s: job {job['status']} {time.monotonic() - back:.1f} s after S3 returned"
          f" ({job['error']})")  # fmt: skip
    # And the farm works again
    again = farm.post(key, uncached(QUICK), "Quick")
    assert farm.wait(key, again, timeout=REDO)["status"] == "completed"


def test_worker_stopped_for_90_seconds(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    job_id = farm.post(key, uncached(SLOW.format(sleep=4)), "Slow")
    host = farm.wait_running_chunk(job_id)
    bed.signal(host, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # Bound: the lease expires and the other host takes the chunk over
        farm.wait(
            key, job_id, timeout=LEASE + REAPER + REDO, what="complete without the stopped worker"
        )
        took = time.monotonic() - stopped_at
        done = Completed(farm, key, job_id)
        done.check()
        time.sleep(max(0.0, 90 - (time.monotonic() - stopped_at)))
    finally:
        bed.signal(host, signal.SIGCONT)
    print(f"\nSIGSTOP 90 s: completed {took:.1f} s after the stop")
    _after_zombie(bed, farm, host, done)


# Last of the module, on purpose: a worker whose Celery consumer loses Redis while acking can stay
# connected-looking but never consume again (celery/celery#9054, #10302, still so with celery
# and kombu 5.7.0, seen on this bed); the other worker host finishes the jobs, so this test
# passes, but a test after it that stops that other host would find no consumer left. The
# farm does not yet detect such a stalled consumer (see the README's reliability section).
def test_redis_restart_with_jobs_queued_and_running(bed: NetBed, farm: Farm) -> None:
    key = farm.key()
    jobs = [farm.post(key, uncached(SLOW.format(sleep=3)), "Slow") for _ in range(3)]
    farm.wait_running_chunk(jobs[0])
    bed.stop("redis")  # no persistence: every queued message is gone
    time.sleep(2)
    bed.start("redis")
    bed.wait_service("redis")
    restarted = time.monotonic()
    # Bound: lost messages are published again after REQUEUE_AFTER; then three jobs render
    for job_id in jobs:
        job = farm.wait(key, job_id, timeout=REQUEUE_AFTER + 3 * REDO, what="survive")
        assert job["status"] == "completed", job["error"]
        Completed(farm, key, job_id).check()
    print(f"\nRedis restart: all 3 jobs done {time.monotonic() - restarted:.1f} s after it")
