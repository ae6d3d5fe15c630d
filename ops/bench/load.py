"""Load on the multi-host bed: a burst of submits by many users, then status polls while the
accepted jobs render.

    sudo .venv/bin/python ops/bench/load.py [--jobs 1000] [--users 20] [--rate 200] [--seconds 20]

1. Burst: ``--users`` threads submit ``--jobs`` renders in all, as fast as the API answers.
   ``--unique`` of them are new scenes that really render (a user over
   ``--max-unfinished`` gets them held, queued); the others repeat a scene rendered before
   the burst, which the result cache completes at once (``FARM_CACHE_SCOPE=global``). Every
   answer must be 202 or 429 with ``Retry-After``; every 202's job must exist (none lost),
   and every accepted job must end (none stuck).
2. Polls: ``GET /api/v2/render/{id}`` on the accepted jobs at ``--rate`` requests/s (open
   loop: each request leaves at its planned time, from one asyncio loop over keep-alive
   connections) for ``--seconds`` while they render;
   prints latency percentiles and the API's CPU time per request (gunicorn's processes,
   from /proc).

Runs on tests/multihost/netbed.py's namespaces (root needed): the API has its own host, so
the figures are the API's, not the load generator's (both share this machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.multihost.netbed import NetBed  # noqa: E402

SCENE = """
from manim import *

class Tiny(Scene):
    def construct(self):
        self.play(FadeIn(Dot()), run_time=1)
# {tag}
"""


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        except (OSError, IndexError):
            continue
    return total


def _tree(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        up = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == up]
        found.extend(kids)
        frontier.extend(kids)
    return found


class Client:
    """One keep-alive HTTP connection (a thread's own)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def request(
        self, method: str, path: str, key: str, body: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def burst(bed: NetBed, keys: list[str], jobs: int, unique: int) -> dict[str, Any]:
    host, port = bed.addr("api"), bed.port("api")
    per_user = [jobs // len(keys) + (1 if i < jobs % len(keys) else 0) for i in range(len(keys))]
    answers: list[tuple[int, str | None, str | None, str]] = []
    lock = threading.Lock()
    gate = threading.Barrier(len(keys))
    every = max(1, jobs // max(1, unique))
    counter = iter(range(jobs))

    def user(key: str, n: int) -> None:
        client = Client(host, port)
        gate.wait()
        for _ in range(n):
            with lock:
                i = next(counter)
            tag = uuid.uuid4() if i % every == 0 and i // every < unique else "warm"
            body = {"code": SCENE.format(tag=tag), "className": "Tiny",
                    "quality": "low", "fps": 5}  # fmt: skip
            status, headers, raw = client.request("POST", "/api/v2/render", key, body)
            payload = json.loads(raw) if raw.startswith(b"{") else {}
            with lock:
                answers.append((status, payload.get("jobId"), headers.get("Retry-After"), key))

    threads = [
        threading.Thread(target=user, args=(k, n)) for k, n in zip(keys, per_user, strict=True)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    codes = Counter(a[0] for a in answers)
    accepted = [(a[1], a[3]) for a in answers if a[0] == 202 and a[1]]
    bad = [a for a in answers if a[0] not in (202, 429) or (a[0] == 429 and not a[2])]
    return {"took": took, "codes": codes, "accepted": accepted, "bad": bad, "sent": len(answers)}


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, key: str
) -> tuple[int, bool]:
    """One GET; its status, and whether the server keeps the connection open (gunicorn's sync
    workers close it after every answer). The body is read and dropped."""
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection" and value.strip().lower() == "close":
            keep = False
    await reader.readexactly(length)
    return int(lines[0].split()[1]), keep


async def _polls(
    host: str, port: int, targets: list[tuple[str, str]], rate: float, seconds: float
) -> tuple[list[float], list[float], Counter[int], float]:
    """An open-loop load: request i leaves at start + i / rate on an idle keep-alive connection
    (a new one when none is idle), whatever the earlier ones' fate; one event loop, so a
    response is timed when it arrives, not when a thread gets the GIL."""
    total = int(rate * seconds)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    late: list[float] = []
    codes: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5

    async def one(i: int) -> None:
        planned = start + i / rate
        await asyncio.sleep(max(0.0, planned - loop.time()))
        job_id, key = targets[i % len(targets)]
        sent = loop.time()
        conn = idle.pop() if idle else await asyncio.open_connection(host, port)
        status, keep = await _get(*conn, host, f"/api/v2/render/{job_id}", key)
        latencies.append(loop.time() - sent)
        late.append(max(0.0, sent - planned))
        codes[status] += 1
        if keep:
            idle.append(conn)
        else:
            conn[1].close()

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = loop.time() - start
    for _, writer in idle:
        writer.close()
    return latencies, late, codes, elapsed


def polls(
    bed: NetBed, targets: list[tuple[str, str]], rate: float, seconds: float
) -> dict[str, Any]:
    api_pids = _tree(bed.procs["api"].pid)
    cpu_before = _cpu_seconds(api_pids)
    latencies, late, codes, elapsed = asyncio.run(
        _polls(bed.addr("api"), bed.port("api"), targets, rate, seconds)
    )
    cpu = _cpu_seconds(api_pids) - cpu_before
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "achieved_rate": len(latencies) / elapsed,
        "codes": codes,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "late_p99_ms": sorted(late)[int(0.99 * len(late))] * 1000 if late else 0.0,
        "api_cpu_ms_per_request": cpu / max(1, len(latencies)) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--api-workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--unique", type=int, default=40, help="submits that really render")
    parser.add_argument("--max-unfinished", type=int, default=3, help="per user")
    parser.add_argument("--wait", type=float, default=900.0, help="for every job to end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("ops/bench/load.py needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    import psycopg
    import psycopg.rows

    from farm.keys import create_key

    bed = NetBed(
        slot=int(os.environ.get("FARM_TEST_SLOT", "0")),
        api_workers=args.api_workers,
        overrides={
            "FARM_MAX_ACTIVE_JOBS_PER_USER": str(args.max_unfinished),
            "FARM_RATE_LIMIT_PER_SECOND": "100",
            "FARM_RATE_LIMIT_BURST": "200",
            # The repeats hit the result cache across users (an operator's choice; the
            # default serves each user only their own results).
            "FARM_CACHE_SCOPE": "global",
        },
    )
    failures: list[str] = []
    with bed.running():
        from decimal import Decimal

        with psycopg.connect(bed.database_url, row_factory=psycopg.rows.dict_row) as conn:
            keys = [
                create_key(conn, f"load-{i}", Decimal(100_000), None).key for i in range(args.users)
            ]
        warm = Client(bed.addr("api"), bed.port("api"))
        _, _, raw = warm.request(
            "POST",
            "/api/v2/render",
            keys[0],
            {"code": SCENE.format(tag="warm"), "className": "Tiny", "quality": "low", "fps": 5},
        )
        warm_id = json.loads(raw)["jobId"]
        for _ in range(300):
            _, _, raw = warm.request("GET", f"/api/v2/render/{warm_id}", keys[0])
            if json.loads(raw)["status"] in ("completed", "failed"):
                break
            time.sleep(0.5)
        b = burst(bed, keys, args.jobs, args.unique)
        print(
            f"burst: {b['sent']} submits by {args.users} users in {b['took']:.1f} s"
            f" ({b['sent'] / b['took']:.0f}/s): {dict(b['codes'])}"
        )
        if b["bad"]:
            failures.append(f"{len(b['bad'])} answers neither 202 nor 429+Retry-After")
        if b["sent"] != args.jobs:
            failures.append(f"sent {b['sent']} of {args.jobs}")
        ids = [job_id for job_id, _ in b["accepted"]]
        with psycopg.connect(bed.database_url) as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'completed'),"
                " count(*) FILTER (WHERE held_limit IS NOT NULL) FROM jobs WHERE id = ANY(%s)",
                (ids,),
            ).fetchone()
        found, cached, held = (row[0], row[1], row[2]) if row else (0, 0, 0)
        lost = len(ids) - found
        print(
            f"accepted {len(ids)} ({cached} completed by now from the result cache, {held} held"
            f" at their user's limit of {args.max_unfinished}), lost {lost}"
        )
        if lost:
            failures.append(f"{lost} accepted jobs missing")
        p = polls(bed, b["accepted"], args.rate, args.seconds)
        print(
            f"GET /api/v2/render/{{id}} at {args.rate:.0f}/s for {args.seconds:.0f} s while"
            f" rendering: {p['requests']} requests ({p['achieved_rate']:.0f}/s), codes"
            f" {dict(p['codes'])}; latency p50 {p['p50_ms']:.1f} ms, p90 {p['p90_ms']:.1f} ms,"
            f" p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms (send lag p99"
            f" {p['late_p99_ms']:.1f} ms); API CPU {p['api_cpu_ms_per_request']:.2f} ms/request"
        )
        if p["p99_ms"] >= 50:
            failures.append(f"p99 {p['p99_ms']:.1f} ms >= 50 ms")
        deadline = time.monotonic() + args.wait
        waiting = len(ids)
        while time.monotonic() < deadline:
            with psycopg.connect(bed.database_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM jobs WHERE id = ANY(%s)"
                    " AND status NOT IN ('completed', 'failed')",
                    (ids,),
                ).fetchone()
            waiting = row[0] if row else 0
            if not waiting:
                break
            time.sleep(2)
        with psycopg.connect(bed.database_url) as conn:
            statuses = dict(
                conn.execute(
                    "SELECT status, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY status", (ids,)
                ).fetchall()
            )
        print(f"every accepted job ended: {statuses} ({waiting} still unfinished)")
        if waiting:
            failures.append(f"{waiting} jobs stuck after {args.wait:.0f} s")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
