"""Kodisc conformance: a client and a webhook receiver written from Kodisc's public v2 docs
(api-reference, authentication, webhooks, errors, quickstart), run against the real farm.

The farm is ``farm api`` (gunicorn) on the slot's port, the session's worker and scheduler, and
real PostgreSQL, Redis and S3. The client is plain ``requests`` with nothing but a base URL and a
key, as an existing Kodisc integration would be; only the test's setup (users, keys, limits) uses
the farm's own code. Renders are tiny: low quality, scenes of a second or less.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import requests
import schemathesis

from farm import jobs, keys, users
from farm.captions import EMPTY_CAPTIONS_KEY
from tests.conftest import SLOT, Key, Process, unique
from tests.test_webhooks import Receiver, receiver  # noqa: F401  (the HTTPS receiver fixture)

API_PORT = 8400 + SLOT  # test_observability has 8200+slot
TERMINAL = ("completed", "failed")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Kodisc's fields of GET /api/v2/render/{jobId}, all "required".
JOB_FIELDS = {
    "jobId",
    "endpoint",
    "status",
    "creditsCost",
    "durationMs",
    "result",
    "error",
    "metadata",
    "createdAt",
    "completedAt",
}

HELLO = """\
from manim import *


class HelloKodisc(Scene):
    def construct(self):
        # {tag}
        self.play(Write(Text("Hello")), run_time=0.5)
"""
SLOW = """\
import time

from manim import *


class Slow(Scene):
    def construct(self):
        # {tag}
        time.sleep(2)
        self.play(FadeIn(Square()), run_time=0.5)
"""
BROKEN = """\
from manim import *


class Broken(Scene):
    def construct(self):
        raise ValueError("no such thing {tag}")
"""


# --- the farm, served as in production --------------------------------------------------------


@pytest.fixture(scope="module")
def base_url(farm_env: dict[str, str], artifacts: Path) -> Iterator[str]:
    """``farm api`` on this slot's conformance port; the Kodisc base URL is ``<this>/api/v2``."""
    log = artifacts / f"api-conformance-{SLOT}.log"
    proc = Process(["api", "--bind", f"127.0.0.1:{API_PORT}", "--workers", "1"], farm_env, log)
    proc.start()
    url = f"http://127.0.0.1:{API_PORT}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.proc is not None and proc.proc.poll() is None, f"farm api exited; see {log}"
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"farm api did not answer; see {log}"
        time.sleep(0.2)
    yield url
    proc.stop()


# --- a client written from docs.kodisc.com -----------------------------------------------------


class KodiscClient:
    """Quickstart: Bearer key, JSON bodies, POST /render, poll GET /render/{jobId}, GET /me."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base = f"{base_url}/api/v2"
        self.session = requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )

    def render(self, **body: Any) -> requests.Response:
        return self.session.post(f"{self.base}/render", json=body, timeout=30)

    def job(self, job_id: str) -> requests.Response:
        return self.session.get(f"{self.base}/render/{job_id}", timeout=30)

    def me(self) -> requests.Response:
        return self.session.get(f"{self.base}/me", timeout=30)

    def submit(self, code: str, class_name: str, **fields: Any) -> str:
        response = self.render(code=code, className=class_name, quality="low", **fields)
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) == {"jobId", "status", "endpoint"}
        assert isinstance(body["jobId"], str) and body["endpoint"] == "render"
        assert body["status"] in ("queued", "completed")  # completed: served from the cache
        return str(body["jobId"])

    def wait(self, job_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 150) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.job(job_id).json()
            if doc["status"] in until:
                return doc
            time.sleep(0.25)
        raise AssertionError(f"{job_id} never reached {until}")


def kodisc_verify(secret: str, header: str, raw_body: bytes) -> bool:
    """docs.kodisc.com/webhooks: split on ",", then on the first "="; HMAC-SHA256 of
    "<t>.<raw body>" with the webhook secret, hex; constant-time compare."""
    parts = {}
    for item in header.split(","):
        name, value = item.split("=", 1)
        parts[name] = value
    signed = parts["t"].encode() + b"." + raw_body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_job_document(doc: dict[str, Any], status: str) -> None:
    """Every field and type of Kodisc's job document, in the given state."""
    assert set(doc) >= JOB_FIELDS, JOB_FIELDS - set(doc)
    assert isinstance(doc["jobId"], str) and doc["endpoint"] == "render"
    assert doc["status"] == status
    assert is_number(doc["creditsCost"]) and doc["creditsCost"] >= 0
    assert ISO.fullmatch(doc["createdAt"])
    if status in TERMINAL:
        assert isinstance(doc["durationMs"], int) and doc["durationMs"] >= 0
        assert ISO.fullmatch(doc["completedAt"]) and doc["completedAt"] >= doc["createdAt"]
    else:
        assert doc["creditsCost"] == 0  # "0 until the job completes"
        assert doc["durationMs"] is None and doc["completedAt"] is None
    if status == "completed":
        assert set(doc["result"]) >= {"video", "thumbnail", "captions"}
        assert all(isinstance(doc["result"][k], str) for k in ("video", "thumbnail", "captions"))
        assert doc["error"] is None
    else:
        assert doc["result"] is None
    if status == "failed":
        assert isinstance(doc["error"], str) and doc["error"]
    else:
        assert doc["error"] is None


@pytest.fixture()
def kodisc_key(make_key: Any, receiver: Receiver) -> tuple[Key, str]:  # noqa: F811
    """A key whose default webhook URL points at the receiver, and that URL's path."""
    path = f"/ok-{unique()}"
    return make_key(credits=1000, webhook_url=receiver.url(path)), path


# --- the lifecycle, queued -> running -> completed, with webhooks -----------------------------


def test_queued_running_completed_and_signed_webhooks(
    base_url: str,
    worker: Any,
    pool: Any,
    make_key: Any,
    kodisc_key: tuple[Key, str],
    receiver: Receiver,  # noqa: F811
) -> None:
    key, path = kodisc_key
    with pool.connection() as conn:  # one job renders at a time: the next one waits queued
        users.update_user(conn, key.user_id, max_active_jobs=1)
    client = KodiscClient(base_url, key.key)
    # Given a slow job and, behind it, Kodisc's HelloKodisc (no subcaptions)
    slow = client.submit(SLOW.format(tag=unique()), "Slow", metadata={"projectId": "proj_42"})
    hello = client.submit(HELLO.format(tag=unique()), "HelloKodisc", aspectRatio="16:9")
    # While the first runs, the second is queued: both documents are complete and typed
    running = client.wait(slow, until=("running", *TERMINAL))
    check_job_document(running, "running")
    assert running["metadata"] == {"projectId": "proj_42"}
    queued = client.job(hello).json()
    check_job_document(queued, "queued")
    assert queued["metadata"] is None
    # When both complete
    done = client.wait(hello)
    check_job_document(done, "completed")
    check_job_document(client.wait(slow), "completed")
    assert done["creditsCost"] > 0
    # Then the result files are what their names say; captions are WebVTT even without cues
    video = requests.get(done["result"]["video"], timeout=30)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    thumb = requests.get(done["result"]["thumbnail"], timeout=30)
    assert thumb.content[:2] == b"\xff\xd8"
    captions = requests.get(done["result"]["captions"], timeout=30)
    assert captions.status_code == 200 and captions.text.startswith("WEBVTT")
    assert "-->" not in captions.text
    # And it is the job's own captions.vtt (Kodisc links one per job), not a shared file
    own = urlsplit(done["result"]["captions"]).path
    assert f"/jobs/{hello}/" in own and own.endswith("/captions.vtt")
    assert urlsplit(client.job(slow).json()["result"]["captions"]).path != own
    # And each job's terminal event arrived once, signed as Kodisc documents
    hits = receiver.wait_hits(path, 2)
    by_job = {}
    for hit in hits:
        headers = hit["headers"]
        assert headers["content-type"] == "application/json"
        assert headers["kodisc-event"] == "completed"
        assert kodisc_verify(key.webhook_secret, headers["kodisc-signature"], hit["body"])
        assert not kodisc_verify(
            key.webhook_secret, headers["kodisc-signature"], hit["body"] + b" "
        )
        t = int(headers["kodisc-signature"].split(",")[0].removeprefix("t="))
        assert abs(time.time() - t) < 300
        payload = requests.models.complexjson.loads(hit["body"])
        by_job[payload["jobId"]] = payload
    assert set(by_job) == {slow, hello}
    # "Field shapes mirror the GET /api/v2/render/{jobId} response"
    sent = by_job[hello]
    check_job_document(sent, "completed")
    assert {k: v for k, v in sent.items() if k != "result"} == {
        k: v for k, v in client.job(hello).json().items() if k != "result"
    }
    assert by_job[slow]["metadata"] == {"projectId": "proj_42"}
    time.sleep(1)
    assert len(receiver.hits(path)) == 2  # exactly once per terminal transition


def test_a_job_completed_before_per_job_captions_links_the_shared_empty_file(
    base_url: str, pool: Any, make_key: Any
) -> None:
    # Given a job that completed before every stitch wrote captions (captions_key NULL)
    key = make_key()
    with pool.connection() as conn:
        request = jobs.JobRequest(code=HELLO.format(tag=unique()), class_name="HelloKodisc")
        job_id = jobs.submit_job(conn, key.id, request, manim_version="old").job_id
        conn.execute(
            "UPDATE jobs SET video_key = 'old/video.mp4', thumbnail_key = 'old/thumb.jpg',"
            " started_at = now() WHERE id = %s",
            (job_id,),
        )
        assert jobs.finish_job(conn, job_id, "completed")
    # Then its result still links a cue-less WebVTT file: the shared one
    doc = KodiscClient(base_url, key.key).job(job_id).json()
    assert urlsplit(doc["result"]["captions"]).path.endswith("/" + EMPTY_CAPTIONS_KEY)
    captions = requests.get(doc["result"]["captions"], timeout=30)
    assert captions.status_code == 200 and captions.text == "WEBVTT\n"


def test_failed_job_and_its_webhook(
    base_url: str,
    worker: Any,
    kodisc_key: tuple[Key, str],
    receiver: Receiver,  # noqa: F811
) -> None:
    key, path = kodisc_key
    client = KodiscClient(base_url, key.key)
    tag = unique()
    job_id = client.submit(BROKEN.format(tag=tag), "Broken")
    # "A render that fails during execution ... still returns 200 ... status: failed"
    response = client.job(job_id)
    assert response.status_code == 200
    doc = client.wait(job_id)
    check_job_document(doc, "failed")
    assert f"no such thing {tag}" in doc["error"]
    [hit] = receiver.wait_hits(path, 1)
    assert hit["headers"]["kodisc-event"] == "failed"
    assert kodisc_verify(key.webhook_secret, hit["headers"]["kodisc-signature"], hit["body"])
    payload = requests.models.complexjson.loads(hit["body"])
    assert payload["status"] == "failed" and payload["result"] is None
    assert payload["error"] == doc["error"]


def test_null_webhook_url_opts_out(
    base_url: str,
    worker: Any,
    kodisc_key: tuple[Key, str],
    receiver: Receiver,  # noqa: F811
) -> None:
    key, path = kodisc_key
    client = KodiscClient(base_url, key.key)
    override = f"/ok-{unique()}"
    quiet = client.submit(HELLO.format(tag=unique()), "HelloKodisc", webhookUrl=None)
    loud = client.submit(
        HELLO.format(tag=unique()), "HelloKodisc", webhookUrl=receiver.url(override)
    )
    client.wait(quiet)
    client.wait(loud)
    [hit] = receiver.wait_hits(override, 1)
    assert requests.models.complexjson.loads(hit["body"])["jobId"] == loud
    time.sleep(1.5)
    assert receiver.hits(path) == []


# --- /me, users and keys ---------------------------------------------------------------------


def test_me(base_url: str, pool: Any, make_key: Any) -> None:
    key = make_key(credits=1840)
    with pool.connection() as conn:
        users.update_user(conn, key.user_id, free_allowance=Decimal(200))
    response = KodiscClient(base_url, key.key).me()
    assert response.status_code == 200
    me = response.json()
    assert {"userId", "keyId", "keyPrefix", "credits"} <= set(me)
    assert all(isinstance(me[k], str) for k in ("userId", "keyId", "keyPrefix"))
    assert me["keyPrefix"] == key.key[:16]  # "First 16 characters of the API key"
    assert me["credits"] == {"paid": 1840, "free": 200, "total": 2040}
    assert all(is_number(v) for v in me["credits"].values())
    assert key.webhook_secret not in response.text and "whsec_" not in response.text


def test_a_users_keys_share_jobs_and_credits_and_strangers_get_404(
    base_url: str, make_key: Any
) -> None:
    production = make_key(credits=10)
    staging = make_key(credits=0, user_id=production.user_id)
    stranger = make_key(credits=10)
    prod, stage, other = (KodiscClient(base_url, k.key) for k in (production, staging, stranger))
    # (a class the code lacks: if a worker is up, the job fails at once)
    job_id = prod.submit(HELLO.format(tag=unique()), "NotInTheCode")
    assert stage.job(job_id).status_code == 200
    assert stage.job(job_id).json()["jobId"] == job_id
    missing = other.job(job_id)
    assert missing.status_code == 404 and "error" in missing.json()
    assert prod.me().json()["userId"] == stage.me().json()["userId"] != other.me().json()["userId"]
    assert prod.me().json()["credits"] == stage.me().json()["credits"]


# --- the 4xx cases of docs.kodisc.com/errors ------------------------------------------------


def test_errors_are_json_with_an_error_field(base_url: str, make_key: Any) -> None:
    key = make_key(credits=1000)
    client = KodiscClient(base_url, key.key)
    anonymous = requests.Session()
    api = f"{base_url}/api/v2"
    valid = {"code": HELLO.format(tag=unique()), "className": "HelloKodisc", "quality": "low"}
    cases: list[tuple[int, requests.Response]] = [
        # 401: missing, malformed, unknown key; before anything about the body
        (401, anonymous.get(f"{api}/me")),
        (401, anonymous.post(f"{api}/render", data=b"#" * (400 * 1024))),
        (401, anonymous.post(f"{api}/render", data=b"{oops")),
        (401, anonymous.get(f"{api}/me", headers={"Authorization": "Bearer kdsc_live_00"})),
        (401, anonymous.get(f"{api}/me", headers={"Authorization": f"Basic {key.key}"})),
        # 400: bad className, unknown quality, non-https webhookUrl, malformed JSON
        (400, client.render(**{**valid, "className": "Hello\n"})),
        (400, client.render(**{**valid, "className": "1up"})),
        (400, client.render(**{**valid, "quality": "ultra"})),
        (400, client.render(**{**valid, "aspectRatio": "4:3"})),
        (400, client.render(**{**valid, "webhookUrl": "http://example.com/hook"})),
        (400, client.render(code="", className="A")),
        (400, client.session.post(f"{api}/render", data=b"{oops")),
        (400, client.session.post(f"{api}/render", data=b'{"code":"x","className":"A","fps":NaN}')),
        (400, client.render(**{**valid, "metadata": {"a": "\u0000"}})),
        (400, client.session.post(f"{api}/render", data=_deep_metadata(960))),
        (400, client.session.post(f"{api}/render", data=_deep_metadata(50_000))),
        (
            400,
            client.session.post(f"{api}/render", data=b'{"code":"x","className":"A","fps":1e400}'),
        ),
        (404, client.session.get(f"{api}/render?cursor=%00")),
        (413, client.session.post(f"{api}/render", data=b"#" * (400 * 1024))),
        # 404: unknown job, a NUL byte in the id
        (404, client.job("clx9f0a1b0000abcd1234efgh")),
        (404, client.session.get(f"{api}/render/job_%00")),
        (405, client.session.put(f"{api}/render")),
    ]
    for expected, response in cases:
        assert response.status_code == expected, (response.request.url, response.text)
        body = response.json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert "className" in cases[5][1].json()["message"]
    assert "webhookUrl" in cases[9][1].json()["message"]
    assert "Allow" in cases[-1][1].headers
    # 402: below the minimum reserve, and no job is created
    broke = KodiscClient(base_url, make_key(credits=0).key)
    response = broke.render(**valid)
    assert response.status_code == 402 and response.json()["error"] == "insufficient_credits"
    # the scheme name is case-insensitive; unknown fields are ignored
    lower = requests.get(f"{api}/me", headers={"Authorization": f"bearer {key.key}"})
    assert lower.status_code == 200
    assert client.render(**valid, futureOption={"x": 1}).status_code == 202


def _deep_metadata(levels: int) -> bytes:
    return b'{"code": "x", "className": "A", "metadata": ' + b"[" * levels + b"]" * levels + b"}"


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (requests would refuse some), return status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /api/v2/render/" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET /api/v2/me HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),
        (b"GET /api/v2/me HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
    ],
    ids=["uri-too-long", "header-too-large", "malformed-header"],
)
def test_the_servers_own_refusals_are_json(
    base_url: str, request_bytes: bytes, status: int
) -> None:
    code, headers, body = _raw(API_PORT, request_bytes)
    assert code == status
    assert headers["content-type"] == "application/json"
    doc = requests.models.complexjson.loads(body)
    assert isinstance(doc["error"], str) and isinstance(doc["message"], str)


# --- the served OpenAPI document, and schemathesis against it -------------------------------


def test_the_served_openapi_is_valid_3_1(base_url: str) -> None:
    from openapi_spec_validator import validate

    spec = requests.get(f"{base_url}/api/v2/openapi.json", timeout=10).json()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    request_schema = spec["components"]["schemas"]["RenderRequest"]
    assert request_schema["properties"]["webhookUrl"]["pattern"] == "^https://"
    assert set(request_schema["required"]) == {"code", "className"}


@pytest.fixture(scope="module")
def served_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/api/v2/openapi.json")


@pytest.fixture(scope="module")
def broke_key(pool: Any) -> Key:
    """A key whose user has no credits: every valid submit stops at 402, nothing renders."""
    with pool.connection() as conn:
        return Key(keys.create_key(conn, "schemathesis", 0))


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_5xx_for_anything_the_schema_allows_or_forbids(case: Any, broke_key: Key) -> None:
    # Generated requests (valid and invalid) with the broke key's auth, and without any
    for headers in ({"Authorization": f"Bearer {broke_key.key}"}, {}):
        response = case.call(headers=headers, timeout=30)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        assert "error" in response.json() if response.status_code >= 400 else True
