"""Webhooks: signing, the SSRF guard, retries, dedupe and replay, against real HTTPS receivers.

Receivers run on 127.0.0.1 (allowlisted in the test settings) with a self-signed certificate
that the settings' ``webhook_ca_bundle`` trusts. No test ever connects to a non-loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from api.app import get_services
from farm import jobs, webhooks
from farm.config import Settings
from tests.conftest import FARM, Key, unique, wait_for
from tests.support import RecordingPublisher, self_signed_cert

TINY = """
from manim import *

class Tiny(Scene):
    def construct(self):
        self.wait(0.2)  # {tag}
"""
HANG_SECONDS = 5.0  # past the tests' 3 s webhook timeout


# --- an independent implementation of the documented recipe (docs/webhooks.md) ---------------


def independent_verify(secret: str, header: str, raw_body: bytes, tolerance: int = 300) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(","))
    timestamp = int(parts["t"])
    expected = hmac.new(
        secret.encode("utf-8"), f"{timestamp}.".encode() + raw_body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - timestamp) <= tolerance


# --- the receiver -------------------------------------------------------------------------------


class Receiver:
    """An HTTPS server on loopback. The path picks the behaviour: /ok, /flaky (500, then 200),
    /fail (always 500), /hang (answers after HANG_SECONDS), /redirect (302 to /ok)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    seen = sum(1 for r in receiver.requests if r["path"] == self.path)
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "body": body,
                            "at": time.time(),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        }
                    )
                try:
                    if self.path.startswith("/hang"):
                        time.sleep(HANG_SECONDS)
                        self._answer(200)
                    elif self.path.startswith("/redirect"):
                        self._answer(302, {"location": receiver.url("/ok-redirected")})
                    elif self.path.startswith("/fail") or (
                        self.path.startswith("/flaky") and seen == 0
                    ):
                        self._answer(500)
                    else:
                        self._answer(200)
                except OSError:  # the farm gave up (timeout) and closed the connection
                    pass

            def _answer(self, status: int, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def hits(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def wait_hits(self, path: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.hits(path)
            if len(found) >= n:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(self.hits(path))} requests, wanted {n}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver(settings: Settings, artifacts: Path, tmp_path_factory: Any) -> Iterator[Receiver]:
    """A receiver whose self-signed certificate is the CA bundle the workers trust."""
    cert, key = self_signed_cert(tmp_path_factory.mktemp("webhook-tls"))
    shutil.copyfile(cert, settings.webhook_ca_bundle)
    r = Receiver(cert, key)
    yield r
    r.close()


# --- helpers --------------------------------------------------------------------------------


def runtime(settings: Settings, pool: Any, storage: Any) -> Any:
    """What ``deliver`` needs of a worker's runtime, with a publisher that only records."""
    return SimpleNamespace(
        settings=settings, pool=pool, storage=storage, publisher=RecordingPublisher()
    )


def ended_job(pool: Any, key: Key, webhook_url: str | None = None) -> str:
    """A job created without publishing anything, then canceled: a terminal ``failed`` event."""
    with pool.connection() as conn:
        request = jobs.JobRequest(
            code=TINY.format(tag=unique()),
            class_name="Tiny",
            quality="low",
            webhook_url=webhook_url,
        )
        job_id = jobs.submit_job(conn, key.id, request, manim_version="test").job_id
        conn.execute("DELETE FROM steps WHERE job_id = %s", (job_id,))
        jobs.cancel_job(conn, job_id, key.user_id)
    return job_id


def deliveries(pool: Any, job_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return webhooks.list_deliveries(conn, job_id)


def wait_deliveries(
    pool: Any, job_id: str, n: int, timeout: float = 60, settled: bool = True
) -> list[dict[str, Any]]:
    """Wait for ``n`` recorded attempts (and, with ``settled``, none still sending)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = deliveries(pool, job_id)
        if len(rows) >= n and not (settled and any(r["error"] == webhooks.SENDING for r in rows)):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"wanted {n} deliveries of {job_id}, have {rows}")


# --- signing (no services) ------------------------------------------------------------------


def test_signature_verifies_and_rejects_tampering_and_stale_timestamps() -> None:
    secret, body = "whsec_" + "ab" * 24, b'{"jobId":"job_1","status":"completed"}'
    now = int(time.time())
    header = webhooks.sign(secret, body, now)

    assert independent_verify(secret, header, body)
    assert webhooks.verify(secret, header, body)
    assert not webhooks.verify(secret, header, body.replace(b"completed", b"failed"))
    assert not webhooks.verify("whsec_other", header, body)
    stale = webhooks.sign(secret, body, now - 301)
    assert not webhooks.verify(secret, stale, body)
    assert webhooks.verify(secret, stale, body, tolerance=400)
    assert not webhooks.verify(secret, webhooks.sign(secret, body, now + 301), body)
    for garbage in ("", "t=abc,v1=00", "v1=" + header.split("v1=")[1], f"t={now}", "nonsense"):
        assert not webhooks.verify(secret, garbage, body)


def test_headers_carry_kodisc_and_farm_names() -> None:
    body = b'{"jobId":"job_1"}'
    sent = webhooks.headers("failed", "whsec_x", body, timestamp=1_700_000_000)
    assert sent["kodisc-event"] == sent["farm-event"] == "failed"
    assert sent["kodisc-signature"] == sent["farm-signature"]
    assert sent["kodisc-signature"].startswith("t=1700000000,v1=")
    assert sent["content-type"] == "application/json"
    assert webhooks.verify("whsec_x", sent["kodisc-signature"], body, now=1_700_000_000)


def test_job_url_overrides_the_keys_and_null_opts_out() -> None:
    assert webhooks.resolve_url("https://job/x", "https://key/y") == "https://job/x"
    assert webhooks.resolve_url(None, "https://key/y") == "https://key/y"
    assert webhooks.resolve_url("", "https://key/y") is None
    assert webhooks.resolve_url(None, None) is None


# --- the SSRF guard (no traffic leaves the process) ------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    import ipaddress

    assert webhooks.forbidden(ipaddress.ip_address(address), []) is not None


def test_allowlist_admits_on_premises_receivers() -> None:
    import ipaddress

    allow = webhooks.parse_allowlist(["127.0.0.1/32", "10.1.0.0/16"])
    assert webhooks.forbidden(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert webhooks.forbidden(ipaddress.ip_address("10.1.2.3"), allow) is None
    assert webhooks.forbidden(ipaddress.ip_address("10.2.0.1"), allow) == "private"
    assert webhooks.forbidden(ipaddress.ip_address("8.8.8.8"), []) is None  # classified only


@pytest.fixture()
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fail any attempt to open a TCP connection, and record it."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise AssertionError(f"connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]:8443/hook",
        "https://localhost/hook",
        "https://127.0.0.1:9/hook",
        "http://203.0.113.7/hook",
        "ftp://example.com/x",
    ],
)
def test_send_refuses_before_connecting(url: str, no_connections: list[Any]) -> None:
    # Given no allowlist, When sending to a forbidden address or a non-https URL
    outcome = webhooks.send(url, b"{}", {}, allowlist=(), timeout=3)
    # Then it is refused, never retried, and no connection was attempted
    assert outcome.kind == "refused" and not outcome.retryable
    assert outcome.status_code == 0 and outcome.error and outcome.error.startswith("refused")
    assert no_connections == []


def test_private_webhook_urls_are_recorded_as_refused_and_not_retried(
    settings: Settings, pool: Any, storage: Any, make_key: Any, no_connections: list[Any]
) -> None:
    key = make_key()
    rt = runtime(settings, pool, storage)
    from workers.steps.webhook import deliver

    for url in ("https://10.0.0.1/hook", "https://169.254.169.254/"):
        job_id = ended_job(pool, key, url)
        deliver(rt, job_id, 1)
        [row] = deliveries(pool, job_id)
        assert row["status_code"] == 0 and row["error"].startswith("refused"), row
        assert row["url"] == url and row["event"] == "failed"
    assert rt.publisher.webhooks == []  # no retries scheduled
    assert no_connections == []


# --- delivery through the real worker --------------------------------------------------------


def test_completed_render_delivers_one_signed_webhook(
    client: Any, pool: Any, make_key: Any, receiver: Receiver, worker: Any
) -> None:
    # Given a key whose default webhook points at the receiver (by host name: SNI + Host)
    path = f"/ok-{unique()}"
    key = make_key(webhook_url=receiver.url(path, host="localhost"))
    code = TINY.format(tag=unique())
    response = client.post(
        "/api/v2/render",
        headers=key.headers,
        json={"code": code, "className": "Tiny", "quality": "low"},
    )
    job_id = response.get_json()["jobId"]
    # When the job completes
    assert wait_for(client, key, job_id)["status"] == "completed"
    [hit] = receiver.wait_hits(path, 1)
    # Then one signed delivery arrived whose body is the job's document
    assert hit["headers"]["content-type"] == "application/json"
    # Kodisc's header names, and the farm's with the same values
    assert hit["headers"]["kodisc-event"] == hit["headers"]["farm-event"] == "completed"
    assert hit["headers"]["kodisc-signature"] == hit["headers"]["farm-signature"]
    assert hit["headers"]["host"] == f"localhost:{receiver.port}"
    assert independent_verify(key.webhook_secret, hit["headers"]["kodisc-signature"], hit["body"])
    sent = json.loads(hit["body"])
    current = client.get(f"/api/v2/render/{job_id}", headers=key.headers).get_json()
    strip = ("result",)  # presigned URLs are signed afresh on every read
    assert {k: v for k, v in sent.items() if k not in strip} == {
        k: v for k, v in current.items() if k not in strip
    }
    assert sent["result"]["video"].split("?")[0] == current["result"]["video"].split("?")[0]
    [row] = wait_deliveries(pool, job_id, 1)
    assert (row["attempt"], row["status_code"], row["error"]) == (1, 200, None)

    # And a cache hit with a job-level URL goes there, not to the key's default
    override = f"/ok-{unique()}"
    response = client.post(
        "/api/v2/render",
        headers=key.headers,
        json={
            "code": code,
            "className": "Tiny",
            "quality": "low",
            "webhookUrl": receiver.url(override),
        },
    )
    cached = response.get_json()
    assert cached["status"] == "completed"
    [hit2] = receiver.wait_hits(override, 1)
    assert json.loads(hit2["body"])["jobId"] == cached["jobId"]
    assert independent_verify(key.webhook_secret, hit2["headers"]["farm-signature"], hit2["body"])

    # And an explicit null opts out of the key's default
    response = client.post(
        "/api/v2/render",
        headers=key.headers,
        json={"code": code, "className": "Tiny", "quality": "low", "webhookUrl": None},
    )
    opted_out = response.get_json()["jobId"]
    with pool.connection() as conn:
        assert jobs.get_job(conn, opted_out)["webhook_url"] == ""
    time.sleep(2)
    assert len(receiver.hits(path)) == 1
    assert deliveries(pool, opted_out) == []


def test_500_then_200_succeeds_once_after_a_retry(
    settings: Settings, pool: Any, make_key: Any, receiver: Receiver, worker: Any, client: Any
) -> None:
    path = f"/flaky-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    job_id = ended_job(pool, key)
    get_services(client.application).publisher.webhook(job_id, 1)  # what the API does
    hits = receiver.wait_hits(path, 2)
    rows = wait_deliveries(pool, job_id, 2)
    assert [(r["attempt"], r["status_code"]) for r in rows] == [(1, 500), (2, 200)]
    assert rows[0]["error"] == "HTTP 500" and rows[1]["error"] is None
    # the retry waited for its offset from the first try (1 s in the test settings)
    assert hits[1]["at"] - hits[0]["at"] >= settings.webhook_retry_delays[0] - 0.2
    time.sleep(settings.webhook_retry_delays[1] + 1)
    assert len(receiver.hits(path)) == 2 and len(deliveries(pool, job_id)) == 2


def test_a_receiver_that_hangs_past_the_timeout_fails_every_try(
    settings: Settings, pool: Any, make_key: Any, receiver: Receiver, worker: Any, client: Any
) -> None:
    path = f"/hang-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    job_id = ended_job(pool, key)
    get_services(client.application).publisher.webhook(job_id, 1)
    tries = 1 + len(settings.webhook_retry_delays)
    rows = wait_deliveries(pool, job_id, tries, timeout=tries * (HANG_SECONDS + 3) + 10)
    assert [r["attempt"] for r in rows] == list(range(1, tries + 1))
    for row in rows:
        assert row["status_code"] == 0 and row["error"].startswith("timed out"), row
        assert row["duration_ms"] < (settings.webhook_timeout_seconds + 1) * 1000
    time.sleep(2)
    assert len(deliveries(pool, job_id)) == tries  # the series ends after the last retry


def test_replay_starts_a_new_series(
    pool: Any, make_key: Any, receiver: Receiver, worker: Any, client: Any, farm_env: Any
) -> None:
    path = f"/ok-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    job_id = ended_job(pool, key)
    get_services(client.application).publisher.webhook(job_id, 1)
    wait_deliveries(pool, job_id, 1)
    out = subprocess.run(
        [FARM, "webhooks", "replay", job_id],
        env=farm_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "series 2" in out.stdout
    hits = receiver.wait_hits(path, 2)
    assert all(
        independent_verify(key.webhook_secret, h["headers"]["farm-signature"], h["body"])
        for h in hits
    )
    wait_deliveries(pool, job_id, 2)
    listed = subprocess.run(
        [FARM, "webhooks", "list", job_id, "--json"],
        env=farm_env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(listed.stdout)
    assert [(r["series"], r["try"], r["status_code"]) for r in rows] == [(1, 1, 200), (2, 1, 200)]
    assert rows[1]["attempt"] == webhooks.SERIES_STRIDE + 1


# --- delivery in-process (deterministic: the publisher only records) -------------------------


def test_a_duplicated_message_never_sends_twice(
    settings: Settings, pool: Any, storage: Any, make_key: Any, receiver: Receiver
) -> None:
    path = f"/ok-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    job_id = ended_job(pool, key)
    rt = runtime(settings, pool, storage)
    from workers.steps.webhook import deliver

    deliver(rt, job_id, 1)
    deliver(rt, job_id, 1)  # the broker delivered the message again
    assert len(receiver.hits(path)) == 1
    assert [(r["attempt"], r["status_code"]) for r in deliveries(pool, job_id)] == [(1, 200)]


def test_retries_are_scheduled_as_offsets_from_the_first_try(
    settings: Settings, pool: Any, storage: Any, make_key: Any, receiver: Receiver
) -> None:
    path = f"/fail-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    job_id = ended_job(pool, key)
    rt = runtime(settings.with_(webhook_retry_delays=(30.0, 300.0, 1800.0)), pool, storage)
    from workers.steps.webhook import deliver

    deliver(rt, job_id, 1)
    [(_, attempt, countdown)] = rt.publisher.webhooks
    assert attempt == 2 and 28 <= countdown <= 30
    # Given the first try was 100 s ago, the second retry is due 300 s after the first try
    with pool.connection() as conn:
        conn.execute(
            "UPDATE webhook_deliveries SET created_at = created_at - interval '100 s'"
            " WHERE job_id = %s",
            (job_id,),
        )
    deliver(rt, job_id, 2)
    assert rt.publisher.webhooks[-1][1] == 3 and 197 <= rt.publisher.webhooks[-1][2] <= 200
    deliver(rt, job_id, 3)
    deliver(rt, job_id, 4)
    assert len(rt.publisher.webhooks) == 3  # the fourth try is the last
    deliver(rt, job_id, 5)  # past the series: ignored
    assert len(receiver.hits(path)) == 4


def test_redirects_are_not_followed(
    settings: Settings, pool: Any, storage: Any, make_key: Any, receiver: Receiver
) -> None:
    path = f"/redirect-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    job_id = ended_job(pool, key)
    from workers.steps.webhook import deliver

    deliver(runtime(settings, pool, storage), job_id, 1)
    [row] = deliveries(pool, job_id)
    assert row["status_code"] == 302 and row["error"] == "HTTP 302"
    assert receiver.hits("/ok-redirected") == []


def test_no_url_means_no_delivery(
    settings: Settings, pool: Any, storage: Any, make_key: Any, receiver: Receiver
) -> None:
    from workers.steps.webhook import deliver

    rt = runtime(settings, pool, storage)
    bare = ended_job(pool, make_key())  # neither the key nor the job has a URL
    opted_out = ended_job(pool, make_key(webhook_url=receiver.url("/ok-never")), webhook_url="")
    for job_id in (bare, opted_out):
        deliver(rt, job_id, 1)
        assert deliveries(pool, job_id) == []
    assert receiver.hits("/ok-never") == []


def test_a_rotated_secret_signs_the_next_delivery(
    settings: Settings, pool: Any, storage: Any, make_key: Any, receiver: Receiver
) -> None:
    from farm import keys
    from workers.steps.webhook import deliver

    path = f"/ok-{unique()}"
    key = make_key(webhook_url=receiver.url(path))
    with pool.connection() as conn:
        secret = keys.rotate_webhook_secret(conn, key.id)
    assert secret.startswith("whsec_") and secret != key.webhook_secret
    deliver(runtime(settings, pool, storage), ended_job(pool, key), 1)
    [hit] = receiver.hits(path)
    assert independent_verify(secret, hit["headers"]["kodisc-signature"], hit["body"])
    assert not independent_verify(
        key.webhook_secret, hit["headers"]["kodisc-signature"], hit["body"]
    )


def test_the_webhook_secret_never_appears_in_api_responses(client: Any, make_key: Any) -> None:
    key = make_key(webhook_url="https://example.com/hook")
    me = client.get("/api/v2/me", headers=key.headers)
    assert me.status_code == 200 and b"whsec_" not in me.data
    assert key.webhook_secret.startswith("whsec_")
    spec = client.get("/api/v2/openapi.json").get_json()
    assert "kodisc-signature" in spec["info"]["description"]


def test_money_is_not_affected_by_webhooks(pool: Any, make_key: Any) -> None:
    # A canceled job is refunded whatever happens to its webhook.
    key = make_key(credits=5)
    ended_job(pool, key, "https://10.0.0.1/hook")
    with pool.connection() as conn:
        from farm import credits

        assert credits.balance(conn, key.user_id) == Decimal(5)


def test_the_retry_pump_finds_lost_first_tries_and_stalled_retries(
    settings: Settings, pool: Any, storage: Any, make_key: Any, receiver: Receiver
) -> None:
    from workers.steps.webhook import deliver

    delays = (30.0, 300.0, 1800.0)
    rt = runtime(settings.with_(webhook_retry_delays=delays), pool, storage)
    key = make_key(webhook_url=receiver.url(f"/fail-{unique()}"))
    lost, failing = ended_job(pool, key), ended_job(pool, key)
    refused = ended_job(pool, key, "https://10.0.0.1/hook")
    opted_out = ended_job(pool, key, "")
    deliver(rt, failing, 1)
    deliver(rt, refused, 1)

    def due() -> set[tuple[str, int]]:
        with pool.connection() as conn:
            found = webhooks.due_deliveries(conn, delays, grace_seconds=60)
        return {d for d in found if d[0] in (lost, failing, refused, opted_out)}

    assert due() == set()  # nothing is late yet
    with pool.connection() as conn:
        conn.execute(
            "UPDATE jobs SET completed_at = completed_at - interval '2 min' WHERE id = ANY(%s)",
            ([lost, failing, refused, opted_out],),
        )
        conn.execute(
            "UPDATE webhook_deliveries SET created_at = created_at - interval '100 s'"
            " WHERE job_id = ANY(%s)",
            ([failing, refused],),
        )
    # the lost first try and the retry due at 30 s (+60 s grace) are late; refusals never are
    assert due() == {(lost, 1), (failing, 2)}
