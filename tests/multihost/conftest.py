"""The multi-host bed as a fixture, and a small client for the farm it runs.

One bed per session (it starts in about 6 s); every test leaves it healthy: links plugged,
routes clear, processes running (the ``healthy`` fixture repairs what a failed test left).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from farm import keys
from farm.config import load_settings
from farm.storage import S3Storage
from tests.conftest import ROOT, SLOT, _process_table
from tests.multihost.netbed import SERVICES, NetBed, sh

QUICK = """
from manim import *

class Quick(Scene):
    def construct(self):
        self.play(Create(Circle()), run_time=0.4)
        self.play(FadeOut(Circle()), run_time=0.4)
"""


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "the multi-host bed needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "the multi-host bed needs iproute2 (`ip`)"
    return None


@pytest.fixture(scope="session")
def bed() -> Iterator[NetBed]:
    reason = _usable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    keep = ROOT / "test-artifacts" / f"multihost-{SLOT}"
    os.environ["FARM_NETBED_KEEP_LOGS"] = str(keep)
    # The runner enters the bed's client host per test (``healthy``), not for the session:
    # other tests of the session use the machine's own services.
    with NetBed(slot=SLOT, workers=2).running(client=False) as running:
        yield running


class Farm:
    """What a client and an operator see of the bed's farm."""

    def __init__(self, bed: NetBed) -> None:
        self.bed = bed
        self.http = requests.Session()
        self.storage = S3Storage(load_settings(bed.farm_settings()))

    def db(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(
            self.bed.database_url, row_factory=dict_row, autocommit=True, connect_timeout=5
        )

    def key(self, credits: int = 10_000, name: str = "multihost") -> dict[str, str]:
        with psycopg.connect(self.bed.database_url, row_factory=dict_row) as conn:
            new = keys.create_key(conn, name, Decimal(credits), None)
        return {"Authorization": f"Bearer {new.key}", "owner": new.api_key.user_id}

    def post(self, headers: dict[str, str], code: str, cls: str, **fields: Any) -> str:
        body = {"code": code, "className": cls, "quality": "low", "fps": 5, **fields}
        response = self.http.post(
            f"{self.bed.api_url}/api/v2/render", json=body, headers=_auth(headers), timeout=30
        )
        assert response.status_code == 202, response.text
        return str(response.json()["jobId"])

    def get(self, headers: dict[str, str], job_id: str) -> dict[str, Any]:
        response = self.http.get(
            f"{self.bed.api_url}/api/v2/render/{job_id}", headers=_auth(headers), timeout=30
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(
        self, headers: dict[str, str], job_id: str, timeout: float, what: str = "end"
    ) -> dict[str, Any]:
        """Poll the job from the database (the API may be what a test breaks)."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.OperationalError), self.db() as conn:
                row = conn.execute(
                    "SELECT status, error, error_kind FROM jobs WHERE id = %s", (job_id,)
                ).fetchone()
            if row is not None and row["status"] in ("completed", "failed"):
                return self.get(headers, job_id)
            time.sleep(0.3)
        raise AssertionError(
            f"job {job_id} did not {what} within {timeout} s (last: {row})\n{self.logs()}"
        )

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        with self.db() as conn:
            return list(
                conn.execute(
                    "SELECT kind, idx, status, attempt, output_key, started_at, finished_at"
                    " FROM steps WHERE job_id = %s ORDER BY kind, idx",
                    (job_id,),
                ).fetchall()
            )

    def ledger(self, job_id: str) -> list[dict[str, Any]]:
        with self.db() as conn:
            return list(
                conn.execute(
                    "SELECT kind, amount FROM credit_ledger WHERE job_id = %s ORDER BY id",
                    (job_id,),
                ).fetchall()
            )

    def objects(self, job_id: str) -> dict[str, str]:
        """Every object the farm stored for a job: key -> etag."""
        found = self.storage.client.list_objects(
            self.storage.bucket, prefix=f"jobs/{job_id}/", recursive=True
        )
        return {o.object_name: str(o.etag) for o in found if o.object_name}

    def busy_worker(self, timeout: float = 60) -> str:
        """The worker host whose jail is rendering a chunk right now."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for host in self.bed.worker_hosts:
                if busy_jails(self.bed.procs[host].pid):
                    return host
            time.sleep(0.1)
        raise AssertionError(f"no worker started rendering within {timeout} s\n{self.logs()}")

    def wait_running_chunk(self, job_id: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s["kind"] == "chunk" and s["status"] == "running" for s in self.steps(job_id)):
                return self.busy_worker(timeout)
            time.sleep(0.1)
        raise AssertionError(f"no chunk of {job_id} started within {timeout} s\n{self.logs()}")

    def logs(self, lines: int = 12) -> str:
        return "\n".join(f"--- {n}\n{self.bed.tail(n, lines)}" for n in self.bed.procs)


def _auth(headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": headers["Authorization"]}


def busy_jails(pid: int) -> list[int]:
    """Runner processes under ``pid`` that were handed a spec (rendering or planning now)."""
    parent, argv = _process_table()
    found = []
    for child, words in argv.items():
        if not any("runner" in w for w in words) or words[0].endswith("bwrap"):
            continue
        chain, up = [], child
        while up > 1:
            up = parent.get(up, 0)
            chain.append(up)
        if pid not in chain:
            continue
        jail = next((argv[p] for p in reversed(chain) if argv.get(p, [""])[0] == "bwrap"), [])
        binds = range(len(jail) - 2)
        scratch = next(
            (jail[i + 1] for i in binds if jail[i] == "--bind" and jail[i + 2] == "/work"), None
        )
        if scratch is not None and os.path.exists(os.path.join(scratch, "spec.json")):
            found.append(child)
    return found


@pytest.fixture(scope="session")
def farm(bed: NetBed) -> Farm:
    return Farm(bed)


@pytest.fixture(autouse=True)
def healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the test from the bed's client host; undo every fault after it, even a failed one."""
    if "bed" not in request.fixturenames:
        yield
        return
    bed: NetBed = request.getfixturevalue("bed")
    bed.enter()
    try:
        yield
        _repair(bed)
    finally:
        bed.leave()


def _repair(bed: NetBed) -> None:
    for host in bed.hosts:
        bed.mend(host)
        for service in SERVICES:
            sh("ip", "-n", bed.ns(host), "route", "del", "blackhole", f"{bed.addr(service)}/32",
               check=False)  # fmt: skip
    for name, proc in bed.procs.items():
        if proc.alive():
            bed.signal(name, signal.SIGCONT)
        else:
            bed.start(name)
    for service in ("postgres", "redis", "s3"):
        bed.wait_service(service)
    bed.wait_until(bed.api_ready, 60, "the API after the test")


def settle(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``check()``; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
