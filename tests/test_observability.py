"""Metrics, queue gauges and logs, observed the way an operator would.

A real Prometheus (Debian's /usr/bin/prometheus, loopback only) scrapes a real ``farm api``
(gunicorn, two workers, multiprocess metrics), a ``farm worker`` and a ``farm scheduler``
started for this module; jobs go through the HTTP API with ``requests``; the assertions read
Prometheus's query API, the logs endpoint and the processes' JSON log files.

This module runs its own stack rather than the session ``worker`` fixture: it needs an idle
queue to fill (``render.twok``) and counters nobody else moves. The stack shares the
session's bucket but has its own PostgreSQL database (``farm_obs_<slot>``), Redis database
(7 - slot) and ports (API 8200+slot, Prometheus 9090+10*slot, worker/scheduler metrics
9115/9116+10*slot), so the session's scheduler and worker, if another module started them,
never see these jobs (a shared database would let the session's dispatcher publish this
stack's steps to the session's worker).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from farm import db, keys, objects
from farm.config import Settings
from farm.storage import S3Storage
from tests.conftest import SLOT, Process, settings_env
from tests.support import drop_database, new_database

pytestmark = pytest.mark.slow

API_PORT = 8200 + SLOT
PROM_PORT = 9090 + 10 * SLOT
WORKER_METRICS_PORT = 9115 + 10 * SLOT
SCHEDULER_METRICS_PORT = 9116 + 10 * SLOT
REDIS_DB = 7 - SLOT  # the slots' own suites use databases 8..15
LOG_CAP = 64 * 1024  # chunk_log_bytes for this stack: well under the endpoint's 256 KiB view
IDLE_QUEUE = "render.twok"  # this module's worker consumes render.low, stitch, webhooks only
READYZ_REQUESTS = 60

# Scenes carry a per-run marker so the result cache never answers for them.
MARKED = """
from manim import *

class Marked(Scene):
    def construct(self):
        print("MARKER-{marker}")
        self.play(FadeIn(Dot()), run_time=0.3)
"""

FAILING = """
from manim import *

class Failing(Scene):
    def construct(self):
        print("MARKER-{marker}")
        raise RuntimeError("boom-{marker}")
"""

# About 5 MB of output, then one short animation.
CHATTY = """
from manim import *

class Chatty(Scene):
    def construct(self):
        print("HEAD-{marker}")
        for i in range(50_000):
            print("x" * 99)
        print("TAIL-{marker}")
        self.play(FadeIn(Square()), run_time=0.3)  # not Marked's: no animation cache hit
"""


@dataclass
class Stack:
    settings: Settings
    api: str
    prom: str
    logs: dict[str, Path]
    owner: dict[str, str]
    stranger: dict[str, str]
    secrets: list[str]
    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)


def _wait(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _up(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


def _key(pool: Any, name: str) -> tuple[dict[str, str], str]:
    with pool.connection() as conn:
        new = keys.create_key(conn, name, Decimal(10_000), None)
    return {"Authorization": f"Bearer {new.key}"}, new.key


def _prometheus_config(path: Path) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": name,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for name, port in (
                ("farm-api", API_PORT),
                ("farm-worker", WORKER_METRICS_PORT),
                ("farm-scheduler", SCHEDULER_METRICS_PORT),
            )
        ],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def stack(
    settings: Settings,
    farm_env: dict[str, str],
    artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(prometheus).exists():
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    if REDIS_DB < 1:
        pytest.skip("no spare Redis database for this slot (database 0 is the dev stack's)")
    obs = settings.with_(
        database_url=new_database(settings.database_url, f"farm_obs_{SLOT}"),
        redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        log_format="json",
        log_level="INFO",
        worker_metrics_port=WORKER_METRICS_PORT,
        scheduler_metrics_port=SCHEDULER_METRICS_PORT,
        chunk_log_bytes=LOG_CAP,
    )
    db.migrate(obs.database_url)
    redis.Redis.from_url(obs.redis_url).flushdb()
    env = {**farm_env, **settings_env(obs)}
    logs = {
        kind: artifacts / f"obs-{kind}-{SLOT}.log"
        for kind in ("api", "worker", "scheduler", "prometheus")
    }
    for log in logs.values():
        log.unlink(missing_ok=True)
    tmp = tmp_path_factory.mktemp("prometheus")
    processes = [
        Process(["api", "--bind", f"127.0.0.1:{API_PORT}", "--workers", "2"], env, logs["api"]),
        Process(
            ["worker", "--queues", "render.low,stitch,webhooks", "--concurrency", "1"],
            env,
            logs["worker"],
        ),
        Process(["scheduler"], env, logs["scheduler"]),
    ]
    with open(logs["prometheus"], "wb") as handle:
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={_prometheus_config(tmp / 'prometheus.yml')}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for process in processes:
            process.start()
        api, prom_url = f"http://127.0.0.1:{API_PORT}", f"http://127.0.0.1:{PROM_PORT}"
        _wait("the API", lambda: _up(f"{api}/healthz"))
        _wait(
            "the worker's /metrics", lambda: _up(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics")
        )
        _wait(
            "the scheduler's /metrics",
            lambda: _up(f"http://127.0.0.1:{SCHEDULER_METRICS_PORT}/metrics"),
        )
        _wait("Prometheus", lambda: _up(f"{prom_url}/-/ready"))
        with db.open_pool(obs, max_size=1) as pool:
            owner, owner_key = _key(pool, "obs-owner")
            stranger, stranger_key = _key(pool, "obs-stranger")
        yield Stack(obs, api, prom_url, logs, owner, stranger, [owner_key, stranger_key])
    finally:
        for process in reversed(processes):
            process.stop()
        if prom.poll() is None:
            prom.send_signal(signal.SIGTERM)
            try:
                prom.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        redis.Redis.from_url(obs.redis_url).flushdb()
        drop_database(obs.database_url)


def _submit(stack: Stack, code: str, class_name: str) -> str:
    response = requests.post(
        f"{stack.api}/api/v2/render",
        headers=stack.owner,
        timeout=10,
        json={"code": code, "className": class_name, "quality": "low"},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["jobId"])


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{stack.api}/api/v2/render/{job_id}", headers=stack.owner, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def ran(stack: Stack) -> Stack:
    """Three jobs through the HTTP API: two complete (one prints ~5 MB), one scene fails."""
    marker = uuid.uuid4().hex
    for name, code, cls in (
        ("marked", MARKED, "Marked"),
        ("failing", FAILING, "Failing"),
        ("chatty", CHATTY, "Chatty"),
    ):
        stack.jobs[name] = _submit(stack, code.replace("{marker}", marker), cls)
    stack.jobs["marker"] = marker

    def finished(job_id: str) -> dict[str, Any] | None:
        job = _job(stack, job_id)
        return job if job["status"] in ("completed", "failed") else None

    for name in ("marked", "failing", "chatty"):
        job_id = stack.jobs[name]
        stack.finished[name] = _wait(f"job {name}", partial(finished, job_id), timeout=240)
    assert stack.finished["marked"]["status"] == "completed", stack.finished["marked"]
    assert stack.finished["chatty"]["status"] == "completed", stack.finished["chatty"]
    assert stack.finished["failing"]["status"] == "failed", stack.finished["failing"]
    return stack


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    response = requests.get(f"{stack.prom}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _value(stack: Stack, expr: str) -> float | None:
    result = _query(stack, expr)
    if len(result) > 1:
        raise ValueError(f"{expr} should give one series, got {result}")
    return float(result[0]["value"][1]) if result else None


def _eventually(stack: Stack, expr: str, expected: float, timeout: float = 30) -> None:
    """Prometheus reports ``expected`` for ``expr`` within ``timeout`` (it scrapes every 1 s)."""
    seen: list[float | None] = []

    def check() -> bool:
        seen.append(_value(stack, expr))
        return seen[-1] == expected

    try:
        _wait(f"{expr} == {expected}", check, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{expr}: expected {expected}, Prometheus said {seen[-5:]}") from None


def test_all_three_process_kinds_are_scraped(stack: Stack) -> None:
    # Given the API, the worker and the scheduler; Then Prometheus scrapes each /metrics
    for job in ("farm-api", "farm-worker", "farm-scheduler"):
        _eventually(stack, f'up{{job="{job}"}}', 1)
    # And the worker primes its label sets and reports its slots per queue it consumes
    _eventually(stack, 'farm_worker_slots{queue="render.low"}', 1)
    assert _value(stack, 'farm_worker_slots{queue="render.high"}') is None


def test_http_requests_are_summed_across_gunicorn_workers(stack: Stack) -> None:
    # Given a burst of concurrent requests, enough that both gunicorn workers serve some
    def hit(_: int) -> int:
        return requests.get(f"{stack.api}/readyz", timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(hit, range(READYZ_REQUESTS)))
    assert set(statuses) == {200}
    # Then both workers served some (their pids are on the JSON access lines)
    pids = {
        line["pid"]
        for line in _json_lines(stack.logs["api"])
        if line.get("logger") == "gunicorn.access" and line.get("path") == "/readyz"
    }
    assert len(pids) == 2, f"only workers {pids} served /readyz"
    # And Prometheus sees the total, not one worker's share
    _eventually(
        stack, 'sum(farm_http_requests_total{route="/readyz", method="GET"})', READYZ_REQUESTS
    )
    _eventually(
        stack,
        'farm_http_requests_total{route="/readyz",method="GET",status="200"}',
        READYZ_REQUESTS,
    )
    _eventually(
        stack, 'sum(farm_http_request_duration_seconds_count{route="/readyz"})', READYZ_REQUESTS
    )
    # And a 4xx is counted by its machine code
    response = requests.get(f"{stack.api}/api/v2/render/nope", headers=stack.stranger, timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    _eventually(stack, 'farm_http_client_errors_total{code="not_found"} >= 1', 1)


def test_job_metrics_move(ran: Stack) -> None:
    # Given two completed jobs and one whose scene raised
    chunks = sum(ran.finished[name]["progress"]["chunksTotal"] for name in ("marked", "chatty"))
    assert chunks >= 2
    # Then the counters reached Prometheus with the right labels
    # (sum(): the worker primes zero-valued series of some API counters too)
    _eventually(ran, 'sum(farm_jobs_submitted_total{quality="low"})', 3)
    _eventually(ran, 'sum(farm_jobs_completed_total{quality="low"})', 2)
    _eventually(ran, 'sum(farm_jobs_failed_total{quality="low", kind="scene_error"})', 1)
    _eventually(ran, 'sum(farm_chunks_rendered_total{queue="render.low"})', chunks)
    _eventually(ran, 'sum(farm_chunk_render_seconds_count{quality="low"})', chunks)
    _eventually(ran, 'sum(farm_stitch_seconds_count{quality="low"})', 2)
    _eventually(ran, 'sum(farm_job_duration_seconds_count{quality="low"})', 3)
    _eventually(ran, "sum(farm_chunks_in_flight)", 0)
    frames = _value(ran, 'sum(farm_frames_rendered_total{quality="low"})')
    credits = _value(ran, 'sum(farm_credits_settled_total{quality="low"})')
    assert frames is not None and frames > 0
    assert credits is not None and credits > 0
    # And nothing for qualities no job used
    assert _value(ran, 'sum(farm_jobs_completed_total{quality="high"})') == 0


def test_queue_depth_gauge_follows_redis(stack: Stack) -> None:
    # Given every queue is exported (empty ones as 0) by the scheduler
    _eventually(stack, "count(farm_queue_depth)", 7)
    _eventually(stack, "count(farm_queue_oldest_job_age_seconds)", 5)
    _eventually(stack, f'farm_queue_consumers{{queue="{IDLE_QUEUE}"}}', 0)
    _eventually(stack, 'farm_queue_consumers{queue="render.low"}', 1)
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        # When five messages wait in a queue no worker here consumes
        client.lpush(IDLE_QUEUE, *[f"placeholder-{i}" for i in range(5)])
        # Then the gauge shows them, and drops when they are gone
        _eventually(stack, f'farm_queue_depth{{queue="{IDLE_QUEUE}"}}', 5)
    finally:
        client.delete(IDLE_QUEUE)
    _eventually(stack, f'farm_queue_depth{{queue="{IDLE_QUEUE}"}}', 0)


ALLOWED_LABELS = {
    "__name__",
    "job",
    "instance",
    "le",
    "route",
    "method",
    "status",
    "quality",
    "code",
    "queue",
    "kind",
    "task",
    "outcome",
    "owner",  # the dispatcher's busiest owners and "other"
    "result",  # the animation cache's hit or miss
}


def test_label_sets_stay_bounded(ran: Stack) -> None:
    # Given every farm series Prometheus holds after real jobs
    response = requests.get(
        f"{ran.prom}/api/v1/series", params={"match[]": '{__name__=~"farm_.+"}'}, timeout=5
    )
    series = response.json()["data"]
    assert len(series) > 50
    forbidden = [ran.jobs[name] for name in ("marked", "failing", "chatty")] + ran.secrets
    for labels in series:
        # Then only the bounded label names appear, and no value is a job id, key or URL
        assert set(labels) <= ALLOWED_LABELS, labels
        for name, value in labels.items():
            assert not any(secret in value for secret in forbidden), labels
            assert "://" not in value, labels
            if name == "route":
                assert value == "unmatched" or value.startswith("/"), labels


def _logs(stack: Stack, job_id: str, headers: dict[str, str]) -> requests.Response:
    return requests.get(f"{stack.api}/api/v2/render/{job_id}/logs", headers=headers, timeout=10)


def test_owner_reads_the_scenes_output_and_others_get_404(ran: Stack) -> None:
    marker = ran.jobs["marker"]
    for name in ("marked", "failing"):
        job_id = ran.jobs[name]
        # When the owner asks for the render log
        response = _logs(ran, job_id, ran.owner)
        # Then it holds what the scene printed, untruncated
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["jobId"] == job_id and body["truncated"] is False
        assert f"MARKER-{marker}" in body["log"], body["log"][-2000:]
        # And another key cannot tell the job exists
        other = _logs(ran, job_id, ran.stranger)
        assert other.status_code == 404 and other.json()["error"] == "not_found"
    # And the failed job reports the scene's exception as its error
    error = ran.finished["failing"]["error"]
    assert f"boom-{marker}" in json.dumps(error), error


def test_a_chatty_scenes_log_is_capped(ran: Stack, storage: S3Storage) -> None:
    # Given a scene that printed about 5 MB
    job_id, marker = ran.jobs["chatty"], ran.jobs["marker"]
    chunks = ran.finished["chatty"]["progress"]["chunksTotal"]
    overhead = 200  # the "[log truncated: N bytes dropped]" line
    # Then every step's stored log kept its head and tail within the cap
    for idx in range(chunks):
        step_log = storage.get_bytes(objects.step_log(job_id, "chunk", idx, 1)).decode()
        assert len(step_log.encode()) <= LOG_CAP + overhead
        assert "[log truncated:" in step_log
    # And the endpoint serves the merged log, marked truncated, head and tail kept
    body = _logs(ran, job_id, ran.owner).json()
    assert body["truncated"] is True
    assert len(body["log"].encode()) <= (chunks + 1) * (LOG_CAP + overhead)  # plan + chunks
    assert "[log truncated:" in body["log"]
    assert f"HEAD-{marker}" in body["log"] and f"TAIL-{marker}" in body["log"]


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {raw[:300]}") from None
    return lines


def test_worker_logs_are_json_with_job_and_chunk(ran: Stack) -> None:
    lines = _json_lines(ran.logs["worker"])
    assert lines, "the worker logged nothing"
    for name in ("marked", "failing", "chatty"):
        job_id = ran.jobs[name]
        about = [line for line in lines if job_id in json.dumps(line)]
        assert about, f"no worker line mentions job {name}"
        for line in about:
            # Every line about the job carries its id as a field
            assert line.get("job_id") == job_id, line
            # and lines about a chunk carry its index
            if "render_chunk" in line["msg"] or line.get("task") == "render_chunk":
                assert isinstance(line.get("chunk"), int), line
        # Celery's own lines are among them: received and succeeded, with the job id
        messages = " | ".join(line["msg"] for line in about)
        assert re.search(r"farm\.\w+\[[0-9a-f-]+\] received", messages), messages[:2000]
        if name != "failing":
            # Its chunk ran as a task of its own, or in its plan's process after the hand-off
            drawn = "render_chunk" in messages or "in the plan's process" in messages
            assert drawn and "succeeded in" in messages, messages[:2000]
            assert any(line.get("chunk") == 0 for line in about), messages[:2000]
    assert any(
        line["process"] == "worker" and line["logger"].startswith("celery") for line in lines
    )


def test_api_and_scheduler_logs_are_json(ran: Stack) -> None:
    api = _json_lines(ran.logs["api"])
    access = [line for line in api if line.get("logger") == "gunicorn.access"]
    assert access and all(isinstance(line["status"], int) for line in access)
    job_id = ran.jobs["marked"]
    # The access lines of a job's URLs carry its id
    job_lines = [line for line in access if job_id in line["path"]]
    assert job_lines and all(line["job_id"] == job_id for line in job_lines)
    assert any(line["logger"] == "gunicorn.error" for line in api)  # boot lines
    scheduler = _json_lines(ran.logs["scheduler"])
    assert any("scheduler running" in line["msg"] for line in scheduler)
    assert all(line["process"] == "scheduler" for line in scheduler)
