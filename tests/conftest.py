"""Fixtures: real PostgreSQL, Redis, S3 (SeaweedFS) and real worker processes.

The suite gets its own database (recreated and migrated per session), Redis database 15, and
S3 bucket. A missing service fails loudly in CI and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from farm import db, keys
from farm.config import Settings, load_settings
from farm.storage import S3Storage
from tests.support import new_database, wait_until_answers

ROOT = Path(__file__).resolve().parent.parent
FARM = str(Path(sys.prefix) / "bin" / "farm")


# Several suites may run at once on one machine (FARM_TEST_SLOT=0..7): each gets its own
# database, Redis database, bucket and ports. `make test` runs two pytest-xdist processes
# (gw0, gw1): each takes its own slot, FARM_TEST_SLOT + its number, and passes it on to the
# processes it starts (the multi-host bed reads it too).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... or unset
SLOT = int(os.environ.get("FARM_TEST_SLOT", "0")) + (int(_XDIST_WORKER[2:]) if _XDIST_WORKER else 0)
os.environ["FARM_TEST_SLOT"] = str(SLOT)
TEST_DB = f"farm_test_{SLOT}"


def _base_settings() -> Settings:
    base = load_settings({})
    url = psycopg.conninfo.make_conninfo(base.database_url, dbname=TEST_DB)
    return base.with_(
        database_url=url,
        redis_url=f"redis://127.0.0.1:6379/{15 - SLOT}",
        s3_bucket=f"farm-test-{SLOT}",
        log_format="text",
        lease_seconds=6,
        heartbeat_seconds=1,
        requeue_after_seconds=30,
        reaper_interval_seconds=1.0,
        chunk_timeout_seconds=60,
        plan_timeout_seconds=60,
        min_chunk_seconds=0.5,
        # The session's plans draw nothing, so every test scene reaches the chunk path (the
        # jail, checks and faults of a long scene's chunks). tests/test_plan_render.py runs its
        # own worker at the default, where short scenes and edits finish in their plan.
        plan_render_seconds=0.0,
        parallelism=2,
        worker_metrics_port=9111 + 10 * SLOT,
        scheduler_metrics_port=9112 + 10 * SLOT,
        rate_limit_per_second=1000.0,
        rate_limit_burst=1000,
        max_active_jobs_per_user=50,
        webhook_allowlist=("127.0.0.1/32",),
        # Short retry schedule; tests/test_webhooks.py writes its receiver's self-signed CA here.
        webhook_retry_delays=(1.0, 2.0, 3.0),
        webhook_timeout_seconds=3.0,
        webhook_ca_bundle=str(ROOT / "test-artifacts" / f"webhook-ca-{SLOT}.pem"),
        # Scene assets from tests/test_assets.py's local server, whose self-signed CA goes here.
        asset_address_allowlist=("127.0.0.1/32",),
        asset_ca_bundle=str(ROOT / "test-artifacts" / f"asset-ca-{SLOT}.pem"),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``FARM_*`` environment that makes a subprocess load exactly ``settings``."""
    env: dict[str, str] = {}
    for name, value in vars(settings).items():
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"FARM_{name.upper()}"] = str(value)
    return env


def _require(what: str, check: Any) -> None:
    try:
        check()
    except Exception as exc:
        message = f"{what} is not reachable ({exc}); start it (make services)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def settings() -> Settings:
    s = _base_settings()
    _require(
        "PostgreSQL",
        lambda: psycopg.connect(
            psycopg.conninfo.make_conninfo(s.database_url, dbname="postgres"), connect_timeout=3
        ).close(),
    )
    _require("Redis", lambda: redis.Redis.from_url(s.redis_url, socket_timeout=3).ping())
    storage = S3Storage(s)
    _require("S3", storage.ensure_bucket)
    db.migrate(new_database(s.database_url, TEST_DB))
    redis.Redis.from_url(s.redis_url).flushdb()
    return s


@pytest.fixture(scope="session")
def pool(settings: Settings) -> Iterator[Any]:
    p = db.open_pool(settings, max_size=4)
    yield p
    p.close()


@pytest.fixture(scope="session")
def storage(settings: Settings) -> S3Storage:
    return S3Storage(settings)


@pytest.fixture(scope="session")
def app(settings: Settings) -> Any:
    from api.app import create_app

    return create_app(settings)


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


class Key:
    def __init__(self, new: keys.NewKey) -> None:
        self.key = new.key
        self.id = new.api_key.id
        self.user_id = new.api_key.user_id
        self.webhook_secret = new.webhook_secret
        self.headers = {"Authorization": f"Bearer {new.key}"}


@pytest.fixture()
def make_key(pool: Any) -> Any:
    def make(
        credits: int = 10_000,
        webhook_url: str | None = None,
        name: str = "test",
        user_id: str | None = None,
    ) -> Key:
        """A new key; without ``user_id``, for a new user holding ``credits`` paid credits."""
        with pool.connection() as conn:
            return Key(keys.create_key(conn, name, Decimal(credits), webhook_url, user_id=user_id))

    return make


@pytest.fixture()
def api_key(make_key: Any) -> Key:
    return make_key()


class Process:
    """A farm process started for the tests, with its log kept for failures."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as handle:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [FARM, *self.args],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def jails(self) -> list[tuple[int, bool]]:
        """(runner pid, busy) of each sandbox under this process; busy: it was handed a spec
        (an idle one is the warm jail waiting for the next chunk)."""
        if self.proc is None:
            return []
        parent, argv = _process_table()

        def ancestors(pid: int) -> list[int]:
            chain = []
            while pid > 1:
                pid = parent.get(pid, 0)
                chain.append(pid)
            return chain

        found = []
        for pid, words in argv.items():
            if "workers.jail.program.runner" not in words or words[0].endswith("bwrap"):
                continue
            chain = ancestors(pid)
            if self.proc.pid not in chain:
                continue
            jail = next((argv[p] for p in reversed(chain) if argv.get(p, [""])[0] == "bwrap"), [])
            scratch = next(
                (
                    jail[i + 1]
                    for i in range(len(jail) - 2)
                    if jail[i] == "--bind" and jail[i + 2] == "/work"
                ),
                None,
            )
            busy = scratch is not None and os.path.exists(os.path.join(scratch, "spec.json"))
            found.append((pid, busy))
        return found

    def render_children(self) -> list[int]:
        """Runner processes that are rendering (or planning) right now under this process."""
        return [pid for pid, busy in self.jails() if busy]


def _process_table() -> tuple[dict[int, int], dict[int, list[str]]]:
    """Parent and argv of every process, read from /proc (ps may cut long command lines)."""
    parent: dict[int, int] = {}
    argv: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv[int(entry)] = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except (OSError, IndexError, ValueError):
            continue
    return parent, argv


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead, only not yet reaped
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


ALL_QUEUES = "render.low,render.medium,render.high,render.twok,render.fourk,stitch,webhooks"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def farm_env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "PROMETHEUS_"))}
    return {**env, **settings_env(settings)}


@pytest.fixture(scope="session")
def worker(settings: Settings, farm_env: dict[str, str], artifacts: Path) -> Iterator[Process]:
    """One worker on every queue with two render slots, and the scheduler (reaper); returns
    once both serve their metrics (the worker starts that server just before consuming)."""
    w = Process(
        ["worker", "--queues", ALL_QUEUES, "--concurrency", "2"],
        farm_env,
        artifacts / f"worker-{SLOT}.log",
    ).start()
    s = Process(["scheduler"], farm_env, artifacts / f"scheduler-{SLOT}.log").start()
    for process, port in ((w, settings.worker_metrics_port), (s, settings.scheduler_metrics_port)):
        wait_until_answers(
            f"http://127.0.0.1:{port}/metrics",
            lambda p=process: p.proc is not None and p.proc.poll() is None,
            f"`farm {' '.join(process.args)}` (see {process.log})",
        )
    for process in (w, s):
        assert process.proc is not None and process.proc.poll() is None, (
            f"`farm {' '.join(process.args)}` exited at start; see {process.log}"
        )
    yield w
    w.stop()
    s.stop()


def submit(client: Any, key: Key, code: str, class_name: str, **fields: Any) -> str:
    body = {"code": code, "className": class_name, "quality": "low", **fields}
    response = client.post("/api/v2/render", json=body, headers=key.headers)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["jobId"])


def wait_for(
    client: Any,
    key: Key,
    job_id: str,
    timeout: float = 120,
    until: tuple[str, ...] = ("completed", "failed"),
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        job = client.get(f"/api/v2/render/{job_id}", headers=key.headers).get_json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in until:
            job["_seen"] = seen
            return dict(job)
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {seen} after {timeout} s")


def unique() -> str:
    return uuid.uuid4().hex[:8]


def wait_until_idle(pool: Any, quality: str = "low", timeout: float = 180) -> None:
    """Until no plan or chunk of ``quality`` holds a render slot: a job cuts as many chunks as
    its queue has free slots (as the planner counts them), so a test that needs a split waits
    out what earlier tests left rendering."""
    from farm import jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pool.connection() as conn:
            # A step still pending (an earlier test's job its worker never got to) would start
            # beside the test's plan and take a slot from it: wait for those as well.
            if (
                jobs.busy_render_steps(conn, quality) == 0
                and jobs.pending_render_steps(conn, quality) == 0
            ):
                return
        time.sleep(0.5)
    raise AssertionError(f"render steps still running after {timeout} s (left by earlier tests)")


def job_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


# `make test-fast` deselects these: tests that need a worker (or a stack with one) render, and
# the sandbox modules run manim in the jail directly.
RENDER_FIXTURES = {"worker", "opengl_worker", "stack"}
RENDER_MODULES = {"test_sandbox.py", "test_scene_runner.py", "test_fidelity.py"}


# Modules whose tests share nothing module-wide: under `make test` they spread over both
# processes (the corpus is the suite's longest module).
UNGROUPED = {"test_fidelity"}


# tryfirst: xdist reads the groups in its own modifyitems hook, which must see them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & RENDER_FIXTURES or item.path.name in RENDER_MODULES:
            item.add_marker(pytest.mark.render)
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def _xdist_group(item: pytest.Item) -> str | None:
    """Under `pytest -n N --dist loadgroup`, the tests of one group run in one process, in
    order: a module keeps its module-scoped stack (or swapped worker), and the multi-host
    tests share one bed."""
    if item.path.parent.name == "multihost":
        return "multihost"
    return None if item.path.stem in UNGROUPED else item.path.stem
