"""Fair dispatch: which waiting plan and chunk steps go onto the Celery queues, and when.

Nobody publishes a plan or chunk step straight away. The API and the planner only write the
step row (``published_at`` NULL); the dispatcher in ``farm scheduler`` publishes it later. That
makes the step table an outbox (a Redis outage after the commit delays a job, it never loses
it) and lets the farm share render slots between tenants:

* every render queue holds at most ``dispatch_queue_depth`` unclaimed messages, so the order
  in which work starts is decided here, not by whoever filled Redis first;
* each round hands the next free place to the owner with the fewest steps in flight (queued or
  running), ties going to the owner served longest ago: a round robin that a flood cannot
  starve. Within one owner, older jobs go first;
* an owner never has more than ``dispatch_owner_max_slots`` steps in flight (0: no cap);
* each message carries a priority from its owner's load when it was sent (Redis serves 0
  first, then 3, 6, 9): a message for an owner with nothing in flight overtakes a flood's
  message already waiting on the queue, so the next free slot goes to the fair choice. Such
  an owner's next step goes out even when the queue is full (one message per idle owner).

A tenant submitting 200 jobs therefore delays another tenant's single job by at most the time
it takes one render slot to free up, which is about one chunk's render time.

Owner: ``jobs.owner``, filled at insert by the ``farm_job_owner`` trigger (the job's user).
Held jobs (their user at their own concurrency limit, ``farm.jobs.release_held``) wait here
until released.
This module imports no Celery: it is handed a ``publish(job_id, kind, idx, quality)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from farm import metrics
from farm.config import Settings
from farm.db import open_pool
from farm.keys import Conn

log = logging.getLogger("farm.dispatch")


class Publish(Protocol):
    def __call__(
        self, job_id: str, kind: str, idx: int, quality: str, priority: int | None = None
    ) -> None: ...


# pg_try_advisory_xact_lock key: one dispatcher round at a time across schedulers.
DISPATCH_LOCK = 727275
CHANNEL = "farm_dispatch"
OTHER = "other"

_ACTIVE = """
SELECT j.owner, j.quality,
       count(*) FILTER (WHERE s.status = 'pending' AND s.published_at IS NULL) AS waiting,
       count(*) FILTER (WHERE s.status = 'pending' AND s.published_at IS NOT NULL) AS queued,
       count(*) FILTER (WHERE s.status = 'running') AS running,
       COALESCE(max(extract(epoch FROM now() - j.created_at))
                FILTER (WHERE s.status = 'pending' AND s.published_at IS NULL), 0)::float
           AS oldest_wait
FROM steps s JOIN jobs j ON j.id = s.job_id
WHERE s.kind IN ('plan', 'chunk') AND s.status IN ('pending', 'running')
  AND j.status IN ('queued', 'running') AND j.held_limit IS NULL
GROUP BY j.owner, j.quality
"""

# Each owner's first few waiting steps, oldest job first.
_WAITING = """
SELECT job_id, kind, idx, quality, owner, waited FROM (
    SELECT s.job_id, s.kind, s.idx, j.quality, j.owner,
           extract(epoch FROM now() - j.created_at)::float AS waited,
           row_number() OVER (PARTITION BY j.owner ORDER BY j.created_at, j.id, s.kind, s.idx)
               AS rank
    FROM steps s JOIN jobs j ON j.id = s.job_id
    WHERE s.status = 'pending' AND s.published_at IS NULL AND s.kind IN ('plan', 'chunk')
      AND j.status IN ('queued', 'running') AND j.held_limit IS NULL
) ranked WHERE rank <= %s
ORDER BY owner, rank
"""


@dataclass(frozen=True)
class Policy:
    owner_max_slots: int = 0  # steps in flight per owner; 0 = no cap
    queue_depth: int = 2  # unclaimed messages kept on each render queue
    metric_owners: int = 10  # owners with their own metric label; the rest are "other"

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            owner_max_slots=settings.dispatch_owner_max_slots,
            queue_depth=max(1, settings.dispatch_queue_depth),
            metric_owners=max(0, settings.dispatch_metric_owners),
        )


@dataclass(frozen=True)
class Pick:
    job_id: str
    kind: str
    idx: int
    quality: str
    owner: str
    waited: float  # seconds since the job was submitted
    priority: int = 0  # 0 first; from the owner's steps in flight when it was picked


@dataclass
class OwnerLoad:
    waiting: int = 0
    in_flight: int = 0  # queued (published, unclaimed) + running
    running: int = 0
    oldest_wait: float = 0.0


class Dispatcher:
    """One per scheduler process; remembers when each owner was last served."""

    def __init__(self, policy: Policy, publish: Publish) -> None:
        self.policy = policy
        self.publish = publish
        self._served: dict[str, int] = {}
        self._turn = 0

    def run_once(self, conn: Conn) -> list[Pick]:
        """Publish what the policy allows now, in the caller's transaction (commit after).

        Messages go out before the commit: if publishing fails the transaction rolls back and
        the steps stay waiting for the next round; if the commit fails after publishing, the
        message is a duplicate the claim's compare-and-set ignores.
        """
        locked = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s) AS ok", (DISPATCH_LOCK,)
        ).fetchone()
        if locked is None or not locked["ok"]:
            return []
        loads, queued = self._loads(conn.execute(_ACTIVE).fetchall())
        _export(loads, self.policy.metric_owners)
        free = {q: self.policy.queue_depth - n for q, n in queued.items()}
        per_owner = max(1, self.policy.queue_depth * 5)
        waiting = conn.execute(_WAITING, (per_owner,)).fetchall()
        picks = self.choose(loads, free, waiting)
        if not picks:
            return []
        conn.execute(
            "UPDATE steps SET published_at = now() WHERE (job_id, kind, idx) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[], %s::int[]))"
            " AND status = 'pending' AND published_at IS NULL",
            ([p.job_id for p in picks], [p.kind for p in picks], [p.idx for p in picks]),
        )
        for pick in picks:
            self.publish(pick.job_id, pick.kind, pick.idx, pick.quality, priority=pick.priority)
            metrics.DISPATCHED.labels(kind=pick.kind).inc()
            if pick.kind == "plan":
                metrics.DISPATCH_WAIT.labels(quality=pick.quality).observe(pick.waited)
        return picks

    @staticmethod
    def _loads(
        rows: Iterable[dict[str, Any]],
    ) -> tuple[dict[str, OwnerLoad], dict[str, int]]:
        loads: dict[str, OwnerLoad] = defaultdict(OwnerLoad)
        queued: dict[str, int] = defaultdict(int)
        for row in rows:
            load = loads[row["owner"]]
            load.waiting += row["waiting"]
            load.in_flight += row["queued"] + row["running"]
            load.running += row["running"]
            load.oldest_wait = max(load.oldest_wait, float(row["oldest_wait"]))
            queued[row["quality"]] += row["queued"]
        return loads, queued

    def choose(
        self,
        loads: dict[str, OwnerLoad],
        free: dict[str, int],
        waiting: Iterable[dict[str, Any]],
    ) -> list[Pick]:
        """The round robin: next place to the owner with the fewest steps in flight."""
        free = defaultdict(lambda: self.policy.queue_depth, free)
        backlog: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in waiting:
            backlog[item["owner"]].append(item)
        in_flight = {owner: loads[owner].in_flight if owner in loads else 0 for owner in backlog}
        cap = self.policy.owner_max_slots
        picks: list[Pick] = []
        while True:
            candidates = []
            for owner, rows in backlog.items():
                if cap and in_flight[owner] >= cap:
                    continue
                # An owner with nothing in flight always gets one message, even on a full
                # queue: it goes out at priority 0 and is served before what fills the queue.
                idle = in_flight[owner] == 0
                head = next((r for r in rows if idle or free[r["quality"]] > 0), None)
                if head is not None:
                    served = self._served.get(owner, -1)
                    candidates.append((in_flight[owner], served, -head["waited"], owner, head))
            if not candidates:
                return picks
            # Fewest in flight; then served longest ago; then the oldest job (FIFO among equals).
            *_, owner, row = min(candidates, key=lambda c: c[:4])
            backlog[owner].remove(row)
            priority = _priority(in_flight[owner])
            in_flight[owner] += 1
            free[row["quality"]] -= 1
            self._turn += 1
            self._served[owner] = self._turn
            picks.append(
                Pick(
                    row["job_id"],
                    row["kind"],
                    row["idx"],
                    row["quality"],
                    owner,
                    row["waited"],
                    priority,
                )
            )


def _priority(in_flight: int) -> int:
    """Redis priority (kombu's steps 0, 3, 6, 9; 0 served first) for an owner's next step."""
    if in_flight == 0:
        return 0
    if in_flight <= 2:
        return 3
    if in_flight <= 5:
        return 6
    return 9


def _export(loads: dict[str, OwnerLoad], top: int) -> None:
    """Per-owner gauges for the ``top`` busiest owners; everyone else is summed as "other"."""
    ranked = sorted(loads.items(), key=lambda kv: (-(kv[1].waiting + kv[1].in_flight), kv[0]))
    shown: dict[str, OwnerLoad] = {}
    for rank, (owner, load) in enumerate(ranked):
        label = owner if rank < top and owner != OTHER else OTHER
        into = shown.setdefault(label, OwnerLoad())
        into.waiting += load.waiting
        into.in_flight += load.in_flight
        into.running += load.running
        into.oldest_wait = max(into.oldest_wait, load.oldest_wait)
    for gauge in (metrics.OWNER_WAITING, metrics.OWNER_RUNNING, metrics.OWNER_OLDEST_WAIT):
        gauge.clear()
    shown.setdefault(OTHER, OwnerLoad())
    for label, load in shown.items():
        metrics.OWNER_WAITING.labels(owner=label).set(load.waiting)
        metrics.OWNER_RUNNING.labels(owner=label).set(load.running)
        metrics.OWNER_OLDEST_WAIT.labels(owner=label).set(load.oldest_wait)


def serve(settings: Settings, publish: Publish, stop: threading.Event | None = None) -> None:
    """The dispatcher loop: a round whenever a step changes state (LISTEN), or every
    ``dispatch_interval_seconds`` anyway. Survives PostgreSQL and Redis outages."""
    stop = stop or threading.Event()
    dispatcher = Dispatcher(Policy.from_settings(settings), publish)
    pool = None
    listener: psycopg.Connection[Any] | None = None
    while not stop.is_set():
        try:
            if pool is None:
                pool = open_pool(settings, max_size=1)
            if listener is None:
                listener = psycopg.connect(settings.database_url, autocommit=True)
                listener.execute(f"LISTEN {CHANNEL}")
            with pool.connection() as conn:
                picks = dispatcher.run_once(conn)
            if picks:
                continue  # more may fit: a claim frees a place, and its notify wakes us anyway
            for _ in listener.notifies(timeout=settings.dispatch_interval_seconds, stop_after=1):
                pass
            # A burst of notifies (many submits) is one round, not one round each.
            time.sleep(0.02)
            for _ in listener.notifies(timeout=0.001):
                pass
        except Exception:  # PostgreSQL or Redis away: the steps wait in the table meanwhile
            log.exception("dispatch round failed")
            if listener is not None:
                listener.close()
                listener = None
            stop.wait(1.0)
    if listener is not None:
        listener.close()
    if pool is not None:
        pool.close()
